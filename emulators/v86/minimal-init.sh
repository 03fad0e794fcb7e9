#!/bin/sh
# /init of the pyapptron v86 initramfs (built by build_minimal.py).
#
# The "minimal" image runs everything from here.  An image whose root is on
# the 9p device (the "agent" image: `pyapptron.root=TAG` on the kernel command
# line) only loads the modules here, mounts that root and hands over to its
# /sbin/pyapptron-init.
#
# Two consoles, two owners: ttyS0 is the human's shell and nothing else may
# print there after boot; /dev/hvc0 (virtio-console port 0) belongs to
# pyapptron-agent, the host's programmatic channel.  This script runs as PID 1
# and must never exit (the kernel would panic).

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Only /bin/sh exists yet: the applet symlinks need /proc to be installed.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s

mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts

# From here on only emergencies reach the console: ttyS0 is the human's.
echo 1 > /proc/sys/kernel/printk

hostname pyapptron
mkdir -p /root /tmp /mnt/host
chmod 1777 /tmp
ln -sf /proc/self/fd /dev/fd 2>/dev/null

# The agent, restarted if it ever dies (it also exits on channel errors and
# waits up to ~10 s for /dev/hvc0 to appear).  Its own messages go to a log,
# never to the human's console.
# Its channel is /dev/hvc0, or what the host names (pyapptron.agent=, the
# shared-memory rings with hvc0 as their wake-up line).
agent_device=$(sed -n 's/.*pyapptron\.agent=\([^ ]*\).*/\1/p' /proc/cmdline)
start_agent() {
    (
        cd /
        while :; do
            /sbin/pyapptron-agent "${agent_device:-/dev/hvc0}" </dev/null >/dev/null 2>>/tmp/pyapptron-agent.log
            sleep 1
        done
    ) &
}

root_tag=$(sed -n 's/.*pyapptron\.root=\([^ ]*\).*/\1/p' /proc/cmdline)
# Persisted directories (boot(persist=...)): they live in the 9p tree, which the host
# keeps in IndexedDB; bind them into place before anyone (the agent) can write there.
persist_paths=$(sed -n 's/.*pyapptron\.persist=\([^ ]*\).*/\1/p' /proc/cmdline)

# A network (boot(network=...)): the guest has an address before the host's first exec.
network=$(sed -n 's/.*pyapptron\.net=\([^ ]*\).*/\1/p' /proc/cmdline)

# virtio transport, console, net and 9p, dependencies first.  The agent starts
# as soon as its console port exists: the host's first exec need not wait for
# the network and 9p modules (about 1.5 s of an emulated boot).
while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/pyapptron/$mod" 2>/dev/null
    case "$mod" in *-virtio_console.ko) [ -n "$root_tag$persist_paths$network" ] || { start_agent; agent_started=1; } ;; esac
done < /lib/modules/pyapptron/order

if [ -n "$network" ]; then
    # An address, a default route and a resolver by DHCP (the emulator's network stack
    # in the page answers at once); /etc/udhcpc/default.script puts them in place.
    udhcpc -i eth0 -q -n -t 5 >/dev/null 2>&1 \
        || echo "pyapptron: boot failed: the network did not come up (no DHCP lease on eth0)" > /dev/console
fi

if [ -n "$root_tag" ]; then
    # cache=loose: the guest is the only writer of its root, so the page cache
    # may keep what it read (an emulated 9p round trip per read is slow).
    mkdir -p /newroot
    if mount -t 9p -o trans=virtio,version=9p2000.L,msize=8192,cache=loose "$root_tag" /newroot \
            && [ -x /newroot/sbin/pyapptron-init ]; then
        umount /dev/pts /dev /sys /proc
        exec switch_root /newroot /sbin/pyapptron-init
    fi
    # No agent here: boot() must fail with this message rather than hand back a busybox
    # machine in place of the image that was asked for.  The console stays usable.
    # ("pyapptron: boot failed: " is what boot() watches for: it fails at once.)
    echo "pyapptron: boot failed: cannot mount the root file system '$root_tag' (is the image's fs/ served?); staying in the initramfs" > /dev/console
    echo 7 > /proc/sys/kernel/printk
    agent_started=no
fi
# The host's shared directory, when the emulator offers one.  Not fatal.
mount -t 9p -o trans=virtio,version=9p2000.L,msize=8192 host9p /mnt/host 2>/dev/null && host_mounted=1

if [ -n "$persist_paths" ]; then
    if [ -n "$host_mounted" ]; then
        for dir in $(echo "$persist_paths" | tr , ' '); do
            mkdir -p "$dir" "/mnt/host$dir" && mount --bind "/mnt/host$dir" "$dir"
        done
    else
        # No agent: boot() fails with this message instead of losing what the guest writes.
        echo "pyapptron: boot failed: the persistent store (9p) could not be mounted; staying in the initramfs" > /dev/console
        agent_started=no
    fi
fi
[ -n "$agent_started" ] || start_agent

ip link set lo up 2>/dev/null

# The human's shell: a login shell on the serial console with job control
# (setsid + cttyhack make ttyS0 its controlling terminal).  /etc/profile sets
# HOME, TERM and PS1.
export HOME=/root TERM=xterm-256color
cd /root
while :; do
    setsid cttyhack sh -l
    sleep 0.2
done
