#!/bin/sh
# /sbin/pyapptron-init: PID 1 of the agent images, started by the initramfs's
# switch_root: "agent" (Debian bookworm i386, root on v86's 9p device) and
# "agent-x86_64" (Debian bookworm amd64 on the c2w engine, root a squashfs disk under
# an overlay in RAM).  Built into them by emulators/v86/build_agent.py and
# emulators/c2w/build_agent64.py.
#
# As in the minimal image: ttyS0 is the human's console (a zsh login), the agent's
# channel belongs to pyapptron-agent: /dev/hvc0 on v86, or what the kernel command
# line names (pyapptron.agent=).  This script must never exit (the kernel would panic).

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev  # (the x86_64 initramfs moved its /dev here)
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
# (the x86_64 image's initramfs mounted /run already: its root's layers are there)
mountpoint -q /run || mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
# Scratch space in RAM: much faster than the 9p root, and gone on reboot as on Debian.
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
# devtmpfs is one instance for all its mounts: the initramfs may have made these.
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr

# From here on only emergencies reach the console: ttyS0 is the human's.
echo 1 > /proc/sys/kernel/printk

# The image's system-wide environment (the agent reads the same file for its commands).
if [ -r /etc/environment ]; then set -a; . /etc/environment; set +a; fi

AGENT_DEVICE=/dev/hvc0
for arg in $(cat /proc/cmdline); do
    case "$arg" in pyapptron.agent=*) AGENT_DEVICE="${arg#pyapptron.agent=}" ;; esac
done

# The agent first: the host's first exec need not wait for anything else.
# Restarted if it ever dies; its own messages go to a log, never to the console.
(
    cd /
    while :; do
        /usr/sbin/pyapptron-agent "$AGENT_DEVICE" </dev/null >/dev/null 2>>/run/pyapptron-agent.log
        sleep 1
    done
) &

hostname -F /etc/hostname 2>/dev/null
ip link set lo up 2>/dev/null

# The human's shell: a zsh login on the serial console, run on a pseudo-terminal that
# `script` relays to ttyS0, as a terminal emulator or sshd would.  Programs that poll
# their terminal for writability (tmux) never get it from v86's UART directly and would
# not draw; on the pty they do.  script also passes the window size on (SIGWINCH), so
# `stty -F /dev/ttyS0 rows R cols C` from the host still resizes the shell.
export HOME=/root TERM=xterm-256color LANG=C.UTF-8 SHELL=/usr/bin/zsh USER=root LOGNAME=root
cd /root
while :; do
    setsid -c script -qfec "/usr/bin/zsh -l" /dev/null </dev/ttyS0 >/dev/ttyS0 2>&1
    sleep 0.2
done
