/*
 * pyapptron-agent: the guest side of the pyapptron guest-agent protocol.
 *
 * The wire format and semantics are defined in emulators/agent/PROTOCOL.md;
 * this file follows it and must change together with it.
 *
 * Usage: pyapptron-agent [DEVICE]      (default /dev/hvc0)
 *        pyapptron-agent fd:N          (use the already-open descriptor N,
 *                                        e.g. one end of a socketpair in tests)
 *        pyapptron-agent --resumed SECONDS.NANOSECONDS [--drop-caches]
 *                                      (after a snapshot resume, run by the host:
 *                                        set the clock, mix the entropy on stdin
 *                                        into the kernel's pool and reseed it,
 *                                        optionally drop the page cache)
 *        pyapptron-agent --tree-list [--upper DIR [--merged DIR]] ROOT...
 *        pyapptron-agent --tree-read
 *        pyapptron-agent --tree-apply [--lower DIR [--merged DIR]]
 *                                      (the persistent layers on engines whose
 *                                        guest keeps its own files: list, read
 *                                        and rebuild directory trees exactly;
 *                                        the formats are below, the host side is
 *                                        pyapptron/persist_guest.py)
 *
 * Design: one thread, one poll() loop.  Everything the agent waits on -- the
 * channel, every child's stdout/stderr/stdin pipe, child exits (through a
 * self-pipe written by the SIGCHLD handler) -- is a descriptor in that loop, so
 * no single slow peer can stall the others.  Frames to the host are written
 * with blocking full writes: the host always consumes, and keeping frames
 * contiguous on the byte stream is what matters.
 *
 * C11 + POSIX/Linux, no dependencies beyond libc.
 */
#define _GNU_SOURCE
/* 64-bit file offsets on i386 too: big files, and /dev/mem above 2 GiB. */
#define _FILE_OFFSET_BITS 64
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/random.h>


/* ---- protocol constants (PROTOCOL.md) ---------------------------------- */

#define PROTOCOL_VERSION 1u
#define AGENT_VERSION "pyapptron-agent 1.0"
#define MAGIC0 0xA5 /* magic 0x5AA5, little-endian */
#define MAGIC1 0x5A
#define HDR_LEN 12u
#define MAX_PAYLOAD (1u << 20)
#define WINDOW_CHUNKS 15u
/* On a serial line (ttyS*, the c2w backend) nothing stops the UART when the
 * kernel's tty buffers are full (64 KiB, less its overhead): bytes beyond are
 * dropped.  A smaller window keeps what is in flight well inside them. */
#define SERIAL_WINDOW_CHUNKS 6u
static uint32_t window_chunks = WINDOW_CHUNKS;
#define CHUNK_SIZE 4096u
static uint32_t chunk_size = CHUNK_SIZE;
/* The shared-memory channel has no guest buffers to overrun: its window only
 * bounds what the host queues ahead (the 1 MiB ring, then the page's queue). */
#define HOSTCHAN_WINDOW_CHUNKS 32u
#define HOSTCHAN_CHUNK_SIZE (64u * 1024u)

/* host -> guest */
#define H_HELLO 0x01
#define H_EXEC 0x10
#define H_STDIN 0x11
#define H_STDIN_EOF 0x12
#define H_SIGNAL 0x13
#define H_READ_FILE 0x20
#define H_WRITE_FILE 0x21
#define H_DATA 0x22
#define H_DATA_END 0x23
#define H_LIST_DIR 0x24

/* guest -> host */
#define G_HELLO 0x01
#define G_STDOUT 0x81
#define G_STDERR 0x82
#define G_EXIT 0x83
#define G_ERROR 0x84
#define G_DATA 0x85
#define G_END 0x86
#define G_WINDOW 0x87

#define EXEC_STDIN_FRAMES 0x1u
#define EXEC_ENV_REPLACES 0x2u

/* Size of the DATA/STDOUT frames we produce: big enough to amortise the
 * header, small enough to keep other requests' output interleaving.  On the
 * shared-memory channel (hostchan, below) a frame costs a memcpy, not a byte
 * per I/O instruction, so its frames are larger. */
#define IO_CHUNK_MAX (128u * 1024u)
static size_t io_chunk = 32u * 1024u;

/* Upper bound on what we drain from a dead child's pipes: a grandchild that
 * keeps writing must not keep the EXIT frame from ever being sent. */
#define DRAIN_LIMIT (1u << 20)

static const char *const builtin_env[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TERM=dumb",
    "LANG=C.UTF-8",
    NULL,
};
/* The built-in defaults, then the image's /etc/environment (set by load_environment). */
static const char **default_env = (const char **)builtin_env;
static size_t n_default_env = sizeof builtin_env / sizeof *builtin_env - 1;
#define DEFAULT_CWD "/root"

/* ---- little-endian helpers --------------------------------------------- */

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* ---- payload reader: bounds-checked, so bad input can never crash us ---- */

struct reader {
    const uint8_t *p;
    uint32_t left;
    bool bad; /* set on any overrun or malformed string; sticky */
};

static uint32_t rd_u32(struct reader *r)
{
    if (r->bad || r->left < 4) {
        r->bad = true;
        return 0;
    }
    uint32_t v = get_u32(r->p);
    r->p += 4;
    r->left -= 4;
    return v;
}

/* Returns a malloc'd NUL-terminated copy of the next string, or NULL (and
 * marks the reader bad) if it overruns or contains a NUL. */
static char *rd_str(struct reader *r)
{
    uint32_t n = rd_u32(r);
    if (r->bad || n > r->left || memchr(r->p, 0, n) != NULL) {
        r->bad = true;
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (s == NULL) {
        r->bad = true;
        return NULL;
    }
    memcpy(s, r->p, n);
    s[n] = '\0';
    r->p += n;
    r->left -= n;
    return s;
}

static void free_strv(char **v)
{
    if (v == NULL)
        return;
    for (char **s = v; *s != NULL; s++)
        free(*s);
    free(v);
}

/* ---- low-level I/O ------------------------------------------------------ */

/* Writes all of buf, retrying on EINTR and waiting out EAGAIN (the channel
 * may be non-blocking).  Returns 0 or an errno value. */
static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            poll(&pfd, 1, -1);
        } else {
            return n < 0 ? errno : EIO;
        }
    }
    return 0;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ---- sending frames ----------------------------------------------------- */

static int chan = -1;

/* ---- the shared-memory channel (hostchan) ------------------------------- */
/*
 * On the c2w backend the emulator (Bochs, our patch 0008) maps two rings at a
 * fixed guest-physical address; we map them through /dev/mem.  A byte through
 * a UART costs an emulated I/O instruction and a share of an interrupt; a
 * frame through the rings costs one memcpy.  The layout is in Bochs's
 * iodev/hostchan.cc: control words, a doorbell page (a write calls the host,
 * which then drains guest-to-host and refills host-to-guest at once), then the
 * two rings.  The serial line we were given (chan) stays open as the host's
 * way to wake us: before poll() sleeps we set "sleeping", and a host that puts
 * bytes in our ring while it is set sends a byte on that line.
 *
 * On v86 the same layout lives in guest RAM that the kernel was told to leave
 * alone (memmap=...$BASE), because v86 can trap only addresses above RAM; its
 * doorbell is a page there ("hostchan@BASE,DOORBELL:TTY").  Page 1 of the RAM
 * region is then unused.
 */
#define HOSTCHAN_PHYS 0xfd000000UL
#define HOSTCHAN_MAP 0x210000UL
#define HOSTCHAN_MAGIC 0x48435950u /* "PYCH" */
enum { HC_MAGIC, HC_VERSION, HC_H2G_OFF, HC_H2G_SIZE, HC_G2H_OFF, HC_G2H_SIZE,
       HC_H2G_HEAD = 8, HC_H2G_TAIL, HC_G2H_HEAD, HC_G2H_TAIL, HC_SLEEPING, HC_ATTACHED };

static struct {
    volatile uint32_t *ctl;
    volatile uint32_t *doorbell;
    uint8_t *h2g, *g2h;
    uint32_t h2g_size, g2h_size;
} hc;
static bool use_hc;

#define HC_BARRIER() __atomic_thread_fence(__ATOMIC_SEQ_CST)

static void hc_kick(void)
{
    HC_BARRIER();
    *hc.doorbell = 1;
    HC_BARRIER();
}

/* Maps the rings at phys (their doorbell at doorbell, or on page 1 when 0);
 * false (and a message) when this machine has none. */
static bool hc_attach(unsigned long long phys, unsigned long long doorbell)
{
    int fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "pyapptron-agent: hostchan: /dev/mem: %s\n", strerror(errno));
        return false;
    }
    void *m = mmap(NULL, HOSTCHAN_MAP, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)phys);
    void *bell = MAP_FAILED;
    if (m != MAP_FAILED && doorbell != 0)
        bell = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)doorbell);
    close(fd);
    if (m == MAP_FAILED || (doorbell != 0 && bell == MAP_FAILED)) {
        fprintf(stderr, "pyapptron-agent: hostchan: mmap: %s\n", strerror(errno));
        if (m != MAP_FAILED)
            munmap(m, HOSTCHAN_MAP);
        return false;
    }
    volatile uint32_t *ctl = m;
    uint32_t h2g_off = ctl[HC_H2G_OFF], h2g_size = ctl[HC_H2G_SIZE];
    uint32_t g2h_off = ctl[HC_G2H_OFF], g2h_size = ctl[HC_G2H_SIZE];
    bool pow2 = h2g_size && g2h_size && !(h2g_size & (h2g_size - 1)) && !(g2h_size & (g2h_size - 1));
    if (ctl[HC_MAGIC] != HOSTCHAN_MAGIC || ctl[HC_VERSION] != 1 || !pow2 ||
        h2g_off + (uint64_t)h2g_size > HOSTCHAN_MAP || g2h_off + (uint64_t)g2h_size > HOSTCHAN_MAP) {
        fprintf(stderr, "pyapptron-agent: hostchan: no channel at %#llx\n", phys);
        munmap(m, HOSTCHAN_MAP);
        if (bell != MAP_FAILED)
            munmap(bell, 0x1000);
        return false;
    }
    hc.ctl = ctl;
    hc.doorbell = (volatile uint32_t *)(bell != MAP_FAILED ? bell : (uint8_t *)m + 0x1000);
    hc.h2g = (uint8_t *)m + h2g_off;
    hc.g2h = (uint8_t *)m + g2h_off;
    hc.h2g_size = h2g_size;
    hc.g2h_size = g2h_size;
    /* What an earlier agent left unread belongs to no session. */
    ctl[HC_H2G_TAIL] = ctl[HC_H2G_HEAD];
    ctl[HC_SLEEPING] = 0;
    ctl[HC_ATTACHED] = 1;
    hc_kick();
    return true;
}

static void hc_write(const uint8_t *p, size_t len)
{
    while (len > 0) {
        uint32_t head = hc.ctl[HC_G2H_HEAD], tail = hc.ctl[HC_G2H_TAIL];
        uint32_t free_bytes = hc.g2h_size - (head - tail);
        if (free_bytes == 0) {
            hc_kick(); /* the host drains the ring during the kick */
            continue;
        }
        uint32_t at = head & (hc.g2h_size - 1);
        size_t n = len < free_bytes ? len : free_bytes;
        if (n > hc.g2h_size - at)
            n = hc.g2h_size - at;
        memcpy(hc.g2h + at, p, n);
        HC_BARRIER();
        hc.ctl[HC_G2H_HEAD] = head + (uint32_t)n;
        p += n;
        len -= n;
    }
}

/* Copies what the host has queued into buf; 0 when the ring is empty. */
static size_t hc_read(uint8_t *buf, size_t cap)
{
    uint32_t head = hc.ctl[HC_H2G_HEAD], tail = hc.ctl[HC_H2G_TAIL];
    HC_BARRIER();
    size_t got = 0;
    while (got < cap && tail != head) {
        uint32_t at = tail & (hc.h2g_size - 1);
        size_t n = head - tail;
        if (n > hc.h2g_size - at)
            n = hc.h2g_size - at;
        if (n > cap - got)
            n = cap - got;
        memcpy(buf + got, hc.h2g + at, n);
        got += n;
        tail += (uint32_t)n;
    }
    if (got > 0) {
        HC_BARRIER();
        hc.ctl[HC_H2G_TAIL] = tail;
        hc_kick(); /* room again: the host refills at once */
    }
    return got;
}

static bool hc_pending(void)
{
    return hc.ctl[HC_H2G_HEAD] != hc.ctl[HC_H2G_TAIL];
}

/* The channel's two operations, whichever transport carries it. */
static int chan_write(const void *buf, size_t len)
{
    if (use_hc) {
        hc_write(buf, len);
        return 0;
    }
    return write_all(chan, buf, len);
}

static void send_frame(uint8_t type, uint32_t id, const void *payload, uint32_t len)
{
    /* One write per frame when it fits: on virtio-console each write becomes
     * its own buffer, so fewer, larger writes are cheaper. */
    static uint8_t buf[HDR_LEN + 64 * 1024];
    buf[0] = MAGIC0;
    buf[1] = MAGIC1;
    buf[2] = type;
    buf[3] = 0;
    put_u32(buf + 4, id);
    put_u32(buf + 8, len);
    int err;
    if (len <= sizeof buf - HDR_LEN) {
        if (len > 0)
            memcpy(buf + HDR_LEN, payload, len);
        err = chan_write(buf, HDR_LEN + len);
    } else {
        err = chan_write(buf, HDR_LEN);
        if (err == 0)
            err = chan_write(payload, len);
    }
    if (use_hc)
        hc_kick(); /* the frame is whole: let the host take it */
    if (err != 0) {
        /* The channel is gone: nothing useful is left to do.  The image's init
         * restarts us, and the host resynchronises with HELLO. */
        fprintf(stderr, "pyapptron-agent: channel write: %s\n", strerror(err));
        exit(2);
    }
}

static void send_hello(void)
{
    uint8_t p[12 + sizeof AGENT_VERSION - 1];
    put_u32(p, PROTOCOL_VERSION);
    put_u32(p + 4, window_chunks);
    put_u32(p + 8, chunk_size);
    memcpy(p + 12, AGENT_VERSION, sizeof AGENT_VERSION - 1);
    send_frame(G_HELLO, 0, p, sizeof p);
}

static void send_u32_frame(uint8_t type, uint32_t id, uint32_t v)
{
    uint8_t p[4];
    put_u32(p, v);
    send_frame(type, id, p, 4);
}

/* ERROR payload: i32 errno, then a message string "<what>: <strerror>". */
static void send_error(uint32_t id, int err, const char *what)
{
    char msg[512];
    int n = snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof msg)
        n = sizeof msg - 1;
    uint8_t p[8 + sizeof msg];
    put_u32(p, (uint32_t)err);
    put_u32(p + 4, (uint32_t)n);
    memcpy(p + 8, msg, (size_t)n);
    send_frame(G_ERROR, id, p, 8 + (uint32_t)n);
}

/* ---- child processes ---------------------------------------------------- */

struct proc {
    uint32_t id;
    pid_t pid; /* also the process group id: the child calls setsid() */
    int out_fd, err_fd, in_fd; /* our pipe ends; -1 once closed */
    /* Pending stdin bytes.  Queued rather than written synchronously so a
     * child that never reads its stdin cannot block the agent. */
    uint8_t *inq;
    size_t inq_off, inq_len, inq_cap;
    bool in_eof; /* STDIN_EOF seen: close in_fd once the queue drains */
    bool exited;
    int status; /* wait status, valid once exited */
};

static struct proc **procs;
static size_t nprocs, procs_cap;

static struct proc *find_proc(uint32_t id)
{
    for (size_t i = 0; i < nprocs; i++)
        if (procs[i]->id == id)
            return procs[i];
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void drop_stdin(struct proc *p)
{
    close_fd(&p->in_fd);
    free(p->inq);
    p->inq = NULL;
    p->inq_off = p->inq_len = p->inq_cap = 0;
}

/* Reads once from a child's output pipe and forwards what came as one frame.
 * Returns the number of bytes forwarded, 0 at EOF/error (fd then closed), or
 * -1 if nothing is available right now. */
static ssize_t forward_output(struct proc *p, int *fd, uint8_t type)
{
    static uint8_t buf[IO_CHUNK_MAX];
    for (;;) {
        ssize_t n = read(*fd, buf, io_chunk);
        if (n > 0) {
            send_frame(type, p->id, buf, (uint32_t)n);
            return n;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return -1;
        close_fd(fd);
        return 0;
    }
}

/* Pushes queued stdin into the child without blocking. */
static void flush_stdin(struct proc *p)
{
    while (p->in_fd >= 0 && p->inq_off < p->inq_len) {
        ssize_t n = write(p->in_fd, p->inq + p->inq_off, p->inq_len - p->inq_off);
        if (n > 0) {
            p->inq_off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else {
            /* EPIPE: the child closed its stdin; drop what is left. */
            drop_stdin(p);
            return;
        }
    }
    if (p->inq_off == p->inq_len) {
        p->inq_off = p->inq_len = 0;
        if (p->in_eof)
            drop_stdin(p);
    }
}

static void queue_stdin(struct proc *p, const uint8_t *data, uint32_t len)
{
    if (p->in_fd < 0 || p->in_eof || len == 0)
        return;
    if (p->inq_len + len > p->inq_cap) {
        size_t cap = p->inq_cap ? p->inq_cap : 4096;
        while (cap < p->inq_len + len)
            cap *= 2;
        uint8_t *q = realloc(p->inq, cap);
        if (q == NULL)
            return; /* out of memory: lose this chunk rather than die */
        p->inq = q;
        p->inq_cap = cap;
    }
    memcpy(p->inq + p->inq_len, data, len);
    p->inq_len += len;
    flush_stdin(p);
}

/* The child has exited: forward what is still in its pipes, send EXIT and
 * forget it.  Background grandchildren may keep the pipes open, so we read
 * only what is available now and never wait for EOF. */
static void finish_proc(size_t index)
{
    struct proc *p = procs[index];
    size_t drained = 0;
    ssize_t n;
    while (p->out_fd >= 0 && drained < DRAIN_LIMIT &&
           (n = forward_output(p, &p->out_fd, G_STDOUT)) > 0)
        drained += (size_t)n;
    drained = 0;
    while (p->err_fd >= 0 && drained < DRAIN_LIMIT &&
           (n = forward_output(p, &p->err_fd, G_STDERR)) > 0)
        drained += (size_t)n;

    int32_t code;
    if (WIFEXITED(p->status))
        code = WEXITSTATUS(p->status);
    else if (WIFSIGNALED(p->status))
        code = -WTERMSIG(p->status);
    else
        code = -1;
    send_u32_frame(G_EXIT, p->id, (uint32_t)code);

    close_fd(&p->out_fd);
    close_fd(&p->err_fd);
    drop_stdin(p);
    free(p);
    procs[index] = procs[--nprocs];
}

static int sig_pipe[2] = {-1, -1};

static void on_sigchld(int signo)
{
    (void)signo;
    int saved = errno;
    ssize_t ignored = write(sig_pipe[1], "c", 1);
    (void)ignored;
    errno = saved;
}

/* Reaps every exited child (including orphans reparented to us as
 * subreaper), then finishes the requests whose process has exited. */
static void reap_children(void)
{
    uint8_t junk[64];
    while (read(sig_pipe[0], junk, sizeof junk) > 0)
        ;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < nprocs; i++) {
            if (procs[i]->pid == pid && !procs[i]->exited) {
                procs[i]->exited = true;
                procs[i]->status = status;
            }
        }
    }
    for (size_t i = 0; i < nprocs;) {
        if (procs[i]->exited)
            finish_proc(i); /* moves the last entry into slot i */
        else
            i++;
    }
}

/* What the child reports through the CLOEXEC error pipe when it cannot
 * start: reading EOF from that pipe means exec succeeded. */
struct start_failure {
    int32_t stage; /* 1: chdir, 2: exec, 3: setup */
    int32_t err;
};

static void child_fail(int fd, int stage)
{
    struct start_failure f = {stage, errno};
    ssize_t ignored = write(fd, &f, sizeof f);
    (void)ignored;
    _exit(127);
}

/* execve, and for a file without a #! line, run it with /bin/sh the way execvp
 * does (a script written by write_file without a shebang still runs). */
static void exec_file(const char *path, char **argv, char **envp)
{
    execve(path, argv, envp);
    if (errno != ENOEXEC)
        return;
    size_t argc = 0;
    while (argv[argc] != NULL)
        argc++;
    char *shargv[argc + 2];
    shargv[0] = (char *)"/bin/sh";
    shargv[1] = (char *)path;
    for (size_t i = 1; i <= argc; i++)
        shargv[i + 1] = argv[i];
    execve("/bin/sh", shargv, envp);
    errno = ENOEXEC;
}

/* execvpe without touching `environ`: this runs in a vfork child, which shares
 * the agent's memory, so it may only write to its own stack. */
static void exec_with_path(char **argv, char **envp)
{
    const char *file = argv[0];
    if (strchr(file, '/') != NULL) {
        exec_file(file, argv, envp);
        return;
    }
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char **e = envp; *e != NULL; e++)
        if (strncmp(*e, "PATH=", 5) == 0)
            path = *e + 5;
    size_t flen = strlen(file);
    bool denied = false;
    for (const char *dir = path;; dir++) {
        const char *end = strchr(dir, ':');
        size_t dlen = end ? (size_t)(end - dir) : strlen(dir);
        char buf[4096];
        if (dlen + 1 + flen + 1 <= sizeof buf) {
            memcpy(buf, dir, dlen);
            size_t n = dlen;
            if (n == 0)
                buf[n++] = '.';
            buf[n++] = '/';
            memcpy(buf + n, file, flen + 1);
            exec_file(buf, argv, envp);
            if (errno == EACCES)
                denied = true;
            else if (errno != ENOENT && errno != ENOTDIR)
                return; /* found but not runnable: report this errno */
        }
        if (end == NULL)
            break;
        dir = end;
    }
    errno = denied ? EACCES : ENOENT;
}

/* Runs in the vfork child; never returns. vfork, not fork: the child shares
 * the agent's memory instead of copying its page tables, which in an emulated
 * CPU is most of the cost of starting a command. */
static void child_start(int report_fd, int in_fd, int out_fd, int err_fd,
                        const char *cwd, char **argv, char **envp)
{
    /* Undo the agent's own signal setup: ignored signals and the signal mask
     * survive exec, and a child with SIGPIPE ignored misbehaves. (Signal
     * dispositions are per process even after vfork.) */
    signal(SIGPIPE, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    setsid(); /* own process group, so SIGNAL reaches everything it starts */
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0)
        child_fail(report_fd, 3);
    if (chdir(cwd) < 0)
        child_fail(report_fd, 1);
    exec_with_path(argv, envp);
    child_fail(report_fd, 2);
}

/* Builds the child's environment: the default one plus the request's
 * entries (overriding same-named ones), or the request's alone. */
static char **build_env(char **req, uint32_t reqc, bool replace)
{
    size_t ndef = replace ? 0 : n_default_env;
    char **env = calloc(ndef + reqc + 1, sizeof *env);
    if (env == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < ndef; i++) {
        const char *d = default_env[i];
        size_t klen = (size_t)(strchr(d, '=') - d) + 1;
        bool overridden = false;
        for (uint32_t j = 0; j < reqc; j++)
            if (strncmp(req[j], d, klen) == 0)
                overridden = true;
        if (!overridden)
            env[n++] = (char *)d;
    }
    for (uint32_t j = 0; j < reqc; j++)
        env[n++] = req[j];
    env[n] = NULL;
    return env;
}

static bool add_proc(struct proc *p)
{
    if (nprocs == procs_cap) {
        size_t cap = procs_cap ? procs_cap * 2 : 16;
        struct proc **v = realloc(procs, cap * sizeof *v);
        if (v == NULL)
            return false;
        procs = v;
        procs_cap = cap;
    }
    procs[nprocs++] = p;
    return true;
}

static void spawn(uint32_t id, uint32_t flags, char **argv, char **envp, const char *cwd)
{
    int report[2] = {-1, -1}, in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
    struct proc *p = calloc(1, sizeof *p);
    bool ok = p != NULL && pipe2(report, O_CLOEXEC) == 0 &&
              pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0;
    if (ok && (flags & EXEC_STDIN_FRAMES))
        ok = pipe2(in, O_CLOEXEC) == 0;
    else if (ok)
        ok = (in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;
    pid_t pid = ok ? vfork() : -1;
    if (pid == 0)
        child_start(report[1], in[0], out[1], err[1], cwd, argv, envp);

    int saved = errno;
    close_fd(&report[1]);
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&err[1]);
    if (pid < 0) {
        send_error(id, saved, "exec: cannot create process");
        goto fail;
    }

    /* Block until the child execs (EOF) or reports why it could not. */
    struct start_failure f;
    ssize_t n;
    do
        n = read(report[0], &f, sizeof f);
    while (n < 0 && errno == EINTR);
    close_fd(&report[0]);
    if (n == (ssize_t)sizeof f) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
            ;
        char what[300];
        snprintf(what, sizeof what, "%s %.256s",
                 f.stage == 1 ? "chdir" : f.stage == 2 ? "exec" : "exec setup",
                 f.stage == 1 ? cwd : argv[0]);
        send_error(id, f.err, what);
        goto fail;
    }

    p->id = id;
    p->pid = pid;
    p->out_fd = out[0];
    p->err_fd = err[0];
    p->in_fd = in[1];
    set_nonblock(p->out_fd);
    set_nonblock(p->err_fd);
    if (p->in_fd >= 0)
        set_nonblock(p->in_fd);
    if (!add_proc(p)) {
        /* Cannot track it: kill it rather than leave it unsupervised. */
        kill(-pid, SIGKILL);
        send_error(id, ENOMEM, "exec");
        goto fail;
    }
    return;

fail:
    close_fd(&report[0]);
    close_fd(&in[1]);
    close_fd(&out[0]);
    close_fd(&err[0]);
    free(p);
}

static void handle_exec(uint32_t id, const uint8_t *payload, uint32_t len)
{
    struct reader r = {payload, len, false};
    char **argv = NULL, **reqenv = NULL, **envp = NULL, *cwd = NULL;

    if (find_proc(id) != NULL) {
        send_error(id, EEXIST, "exec: request id already running");
        return;
    }
    uint32_t flags = rd_u32(&r);
    uint32_t argc = rd_u32(&r);
    /* Each string takes at least 4 bytes, which bounds the counts. */
    if (r.bad || argc == 0 || argc > r.left / 4)
        goto bad;
    argv = calloc((size_t)argc + 1, sizeof *argv);
    for (uint32_t i = 0; argv != NULL && i < argc && !r.bad; i++)
        argv[i] = rd_str(&r);
    uint32_t envc = rd_u32(&r);
    if (argv == NULL || r.bad || envc > r.left / 4)
        goto bad;
    reqenv = calloc((size_t)envc + 1, sizeof *reqenv);
    for (uint32_t i = 0; reqenv != NULL && i < envc && !r.bad; i++) {
        reqenv[i] = rd_str(&r);
        if (reqenv[i] != NULL && strchr(reqenv[i], '=') == NULL)
            r.bad = true;
    }
    cwd = rd_str(&r);
    if (reqenv == NULL || r.bad || argv[0][0] == '\0')
        goto bad;
    envp = build_env(reqenv, envc, (flags & EXEC_ENV_REPLACES) != 0);
    if (envp == NULL)
        goto bad;
    spawn(id, flags, argv, envp, cwd[0] != '\0' ? cwd : DEFAULT_CWD);
    goto out;
bad:
    send_error(id, EINVAL, "exec: malformed request");
out:
    free(envp); /* the strings belong to reqenv or default_env */
    free_strv(argv);
    free_strv(reqenv);
    free(cwd);
}

static void handle_stdin(uint32_t id, const uint8_t *payload, uint32_t len, bool eof)
{
    struct proc *p = find_proc(id);
    if (p == NULL || p->in_fd < 0)
        return; /* finished, or stdin not taken from frames: nothing to feed */
    if (eof) {
        p->in_eof = true;
        flush_stdin(p);
    } else {
        queue_stdin(p, payload, len);
    }
}

static void handle_signal(uint32_t id, const uint8_t *payload, uint32_t len)
{
    struct proc *p = find_proc(id);
    if (p == NULL || p->exited || len < 4)
        return;
    int signo = (int)get_u32(payload);
    if (kill(-p->pid, signo) < 0 && errno == ESRCH)
        kill(p->pid, signo); /* no group (should not happen): the leader alone */
}

/* ---- files -------------------------------------------------------------- */

static char *payload_path(uint32_t id, struct reader *r, const char *op)
{
    char *path = rd_str(r);
    if (path == NULL || path[0] == '\0') {
        send_error(id, path == NULL ? EINVAL : ENOENT, op);
        free(path);
        return NULL;
    }
    return path;
}

static void handle_read_file(uint32_t id, const uint8_t *payload, uint32_t len)
{
    struct reader r = {payload, len, false};
    char *path = payload_path(id, &r, "read_file");
    if (path == NULL)
        return;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer.  Only regular
     * files are read: a FIFO, /dev/zero or a tty would block this loop or
     * stream forever, and every other request would wait behind it. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    if (fd < 0) {
        send_error(id, errno, path);
    } else if (fstat(fd, &st) != 0) {
        send_error(id, errno, path);
    } else if (S_ISDIR(st.st_mode)) {
        send_error(id, EISDIR, path);
    } else if (!S_ISREG(st.st_mode)) {
        char what[300];
        snprintf(what, sizeof what, "%.256s: not a regular file (read it with run())", path);
        send_error(id, EINVAL, what);
    } else {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        static uint8_t buf[IO_CHUNK_MAX];
        for (;;) {
            ssize_t n = read(fd, buf, io_chunk);
            if (n > 0) {
                send_frame(G_DATA, id, buf, (uint32_t)n);
            } else if (n == 0) {
                send_frame(G_END, id, NULL, 0);
                break;
            } else if (errno != EINTR) {
                send_error(id, errno, path);
                break;
            }
        }
    }
    if (fd >= 0)
        close(fd);
    free(path);
}

/* A WRITE_FILE in progress.  A failed one stays listed (fd -1) so the rest of
 * its DATA frames are ignored silently and DATA_END does not answer twice. */
struct wfile {
    uint32_t id;
    int fd;
    struct wfile *next;
};
static struct wfile *wfiles;

static struct wfile **find_wfile(uint32_t id)
{
    struct wfile **w = &wfiles;
    while (*w != NULL && (*w)->id != id)
        w = &(*w)->next;
    return w;
}

static void handle_write_file(uint32_t id, const uint8_t *payload, uint32_t len)
{
    struct wfile **slot = find_wfile(id);
    if (*slot != NULL) {
        send_error(id, EEXIST, "write_file: request id already in use");
        return;
    }
    struct wfile *w = calloc(1, sizeof *w);
    if (w == NULL) {
        send_error(id, ENOMEM, "write_file");
        return;
    }
    w->id = id;
    w->fd = -1;
    *slot = w;

    struct reader r = {payload, len, false};
    uint32_t mode = rd_u32(&r);
    char *path = payload_path(id, &r, "write_file");
    if (path == NULL)
        return;
    mode &= 07777;
    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY,
                 mode ? mode : 0644);
    if (w->fd < 0)
        send_error(id, errno, path);
    else if (mode != 0)
        fchmod(w->fd, mode); /* exact mode, whatever the umask */
    free(path);
}

static void handle_data(uint32_t id, const uint8_t *payload, uint32_t len)
{
    struct wfile *w = *find_wfile(id);
    if (w == NULL || w->fd < 0)
        return;
    int err = write_all(w->fd, payload, len);
    if (err != 0) {
        send_error(id, err, "write_file");
        close_fd(&w->fd);
    }
}

static void handle_data_end(uint32_t id)
{
    struct wfile **slot = find_wfile(id);
    struct wfile *w = *slot;
    if (w == NULL)
        return;
    if (w->fd >= 0) {
        if (close(w->fd) < 0 && errno != EINTR)
            send_error(id, errno, "write_file: close");
        else
            send_frame(G_END, id, NULL, 0);
    }
    *slot = w->next;
    free(w);
}

static char kind_of(mode_t m)
{
    if (S_ISREG(m)) return 'f';
    if (S_ISDIR(m)) return 'd';
    if (S_ISLNK(m)) return 'l';
    if (S_ISCHR(m)) return 'c';
    if (S_ISBLK(m)) return 'b';
    if (S_ISFIFO(m)) return 'p';
    if (S_ISSOCK(m)) return 's';
    return '?';
}

static void handle_list_dir(uint32_t id, const uint8_t *payload, uint32_t len)
{
    struct reader r = {payload, len, false};
    char *path = payload_path(id, &r, "list_dir");
    if (path == NULL)
        return;
    DIR *d = opendir(path);
    if (d == NULL) {
        send_error(id, errno, path);
        free(path);
        return;
    }
    static uint8_t buf[IO_CHUNK_MAX];
    uint32_t used = 0;
    struct dirent *e;
    for (;;) {
        errno = 0;
        e = readdir(d);
        if (e == NULL)
            break;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue; /* removed since readdir: it is not there any more */
        uint32_t nlen = (uint32_t)strlen(e->d_name);
        uint32_t need = 1 + 4 + 8 + 8 + 4 + nlen;
        if (used + need > io_chunk) { /* entries never span two frames */
            send_frame(G_DATA, id, buf, used);
            used = 0;
        }
        uint8_t *q = buf + used;
        q[0] = (uint8_t)kind_of(st.st_mode);
        put_u32(q + 1, (uint32_t)st.st_mode);
        put_u64(q + 5, (uint64_t)st.st_size);
        put_u64(q + 13, (uint64_t)(int64_t)st.st_mtime);
        put_u32(q + 21, nlen);
        memcpy(q + 25, e->d_name, nlen);
        used += need;
    }
    int err = errno;
    closedir(d);
    if (used > 0)
        send_frame(G_DATA, id, buf, used);
    if (err != 0)
        send_error(id, err, path);
    else
        send_frame(G_END, id, NULL, 0);
    free(path);
}

/* ---- the channel: framing, resync, credit --------------------------------- */

static uint8_t *rbuf;
static size_t rlen;
#define RBUF_CAP (HDR_LEN + MAX_PAYLOAD)
static bool synced = true;   /* false after corruption, until a HELLO */
static uint32_t credit_due;  /* chunks fully read but not yet returned */

static const uint8_t hello_header[HDR_LEN] = {MAGIC0, MAGIC1, H_HELLO, 0, 0, 0,
                                              0,      0,      0,       0, 0, 0};

static uint32_t frame_cost(uint32_t len)
{
    return (HDR_LEN + len + chunk_size - 1) / chunk_size;
}

static void dispatch(uint8_t type, uint32_t id, const uint8_t *payload, uint32_t len)
{
    switch (type) {
    case H_EXEC: handle_exec(id, payload, len); break;
    case H_STDIN: handle_stdin(id, payload, len, false); break;
    case H_STDIN_EOF: handle_stdin(id, payload, len, true); break;
    case H_SIGNAL: handle_signal(id, payload, len); break;
    case H_READ_FILE: handle_read_file(id, payload, len); break;
    case H_WRITE_FILE: handle_write_file(id, payload, len); break;
    case H_DATA: handle_data(id, payload, len); break;
    case H_DATA_END: handle_data_end(id); break;
    case H_LIST_DIR: handle_list_dir(id, payload, len); break;
    default: break; /* unknown type: skip it, the framing is still sound */
    }
}

/* While unsynchronised, drop bytes up to the next HELLO header. */
static size_t seek_hello(size_t off)
{
    for (size_t i = off; i + HDR_LEN <= rlen; i++) {
        if (memcmp(rbuf + i, hello_header, HDR_LEN) == 0) {
            synced = true;
            return i;
        }
    }
    /* Keep a possible partial HELLO header at the end. */
    return rlen >= HDR_LEN - 1 ? rlen - (HDR_LEN - 1) : off;
}

/* Handles every complete frame in rbuf, keeps the incomplete tail. */
static void parse_frames(void)
{
    size_t off = 0;
    for (;;) {
        if (!synced) {
            off = seek_hello(off);
            if (!synced)
                break;
        }
        if (rlen - off < HDR_LEN)
            break;
        const uint8_t *h = rbuf + off;
        uint32_t len = get_u32(h + 8);
        if (h[0] != MAGIC0 || h[1] != MAGIC1 || len > MAX_PAYLOAD) {
            /* Corrupt stream: drop everything buffered and wait for HELLO. */
            off = rlen;
            synced = false;
            continue;
        }
        if (rlen - off < HDR_LEN + len)
            break;
        uint8_t type = h[2];
        uint32_t id = get_u32(h + 4);
        off += HDR_LEN + len;
        if (type == H_HELLO) {
            /* The host restarts its accounting at our answer, so credit for
             * anything before (and for the HELLO itself) must not be sent. */
            credit_due = 0;
            send_hello();
        } else {
            credit_due += frame_cost(len);
            dispatch(type, id, h + HDR_LEN, len);
        }
    }
    memmove(rbuf, rbuf + off, rlen - off);
    rlen -= off;
}

/* Reads all that is available on the channel, acts on the complete frames,
 * then returns credit for them in one WINDOW frame. */
static void on_channel_readable(void)
{
    bool full;
    do {
        full = false;
        if (use_hc) {
            /* The serial line only wakes us: what came on it carries nothing. */
            uint8_t wake[256];
            while (read(chan, wake, sizeof wake) > 0)
                ;
        }
        while (rlen < RBUF_CAP) {
            if (use_hc) {
                size_t got = hc_read(rbuf + rlen, RBUF_CAP - rlen);
                if (got == 0)
                    break;
                rlen += got;
                continue;
            }
            ssize_t n = read(chan, rbuf + rlen, RBUF_CAP - rlen);
            if (n > 0) {
                rlen += (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            /* EOF or hangup: the host side is gone.  Exit; init restarts us. */
            exit(n == 0 ? 0 : 3);
        }
        full = rlen == RBUF_CAP;
        parse_frames();
        if (credit_due > 0) {
            send_u32_frame(G_WINDOW, 0, credit_due);
            credit_due = 0;
        }
    } while (full);
}

/* ---- setup -------------------------------------------------------------- */

/* The image's system-wide environment, as pam_env gives a login: KEY=VALUE lines of
 * /etc/environment (# comments, a value may be in double quotes).  An entry replaces a
 * built-in default of the same name. */
static void load_environment(const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return;
    size_t cap = n_default_env + 16, n = 0;
    const char **env = calloc(cap + 1, sizeof *env);
    if (env == NULL) {
        fclose(f);
        return;
    }
    for (size_t i = 0; i < n_default_env; i++)
        env[n++] = default_env[i];
    char line[4096];
    while (fgets(line, sizeof line, f) != NULL) {
        char *p = line + strspn(line, " \t");
        p[strcspn(p, "\r\n")] = 0;
        char *eq = strchr(p, '=');
        if (*p == '#' || eq == NULL || eq == p || strspn(p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") != (size_t)(eq - p))
            continue;
        char *value = eq + 1;
        size_t vlen = strlen(value);
        if (vlen >= 2 && value[0] == '"' && value[vlen - 1] == '"') {
            value[vlen - 1] = 0;
            value++;
        }
        size_t klen = (size_t)(eq - p);
        char *entry = malloc(klen + 1 + strlen(value) + 1);
        if (entry == NULL)
            break;
        memcpy(entry, p, klen + 1);
        strcpy(entry + klen + 1, value);
        size_t i = 0;
        while (i < n && strncmp(env[i], entry, klen + 1) != 0)
            i++;
        if (i == n) {
            if (n == cap) {
                const char **bigger = realloc(env, (2 * cap + 1) * sizeof *env);
                if (bigger == NULL) {
                    free(entry);
                    break;
                }
                env = bigger;
                cap *= 2;
            }
            n++;
        }
        env[i] = entry;
    }
    fclose(f);
    env[n] = NULL;
    default_env = env;
    n_default_env = n;
}

static int open_channel(const char *dev)
{
    if (strncmp(dev, "hostchan", 8) == 0 && (dev[8] == ':' || dev[8] == '@')) {
        /* hostchan:TTY or hostchan@BASE,DOORBELL:TTY - the rings, with TTY as
         * the line that wakes us; the plain line on TTY if this machine has
         * no rings. */
        unsigned long long phys = HOSTCHAN_PHYS, doorbell = 0;
        const char *tty = dev + 9;
        if (dev[8] == '@') {
            /* Both addresses: without its own doorbell a kick on v86 would not trap. */
            char *end, *bell;
            phys = strtoull(dev + 9, &end, 0);
            bool ok = end != dev + 9 && *end == ',';
            if (ok) {
                doorbell = strtoull(end + 1, &bell, 0);
                ok = bell != end + 1 && doorbell != 0 && *bell == ':';
                end = bell;
            }
            if (!ok) {
                fprintf(stderr, "pyapptron-agent: bad channel %s (hostchan@BASE,DOORBELL:TTY)\n", dev);
                exit(1);
            }
            tty = end + 1;
        }
        int fd = open_channel(tty);
        use_hc = hc_attach(phys, doorbell);
        if (use_hc) {
            io_chunk = IO_CHUNK_MAX;
            window_chunks = HOSTCHAN_WINDOW_CHUNKS;
            chunk_size = HOSTCHAN_CHUNK_SIZE;
        }
        return fd;
    }
    if (strncmp(dev, "fd:", 3) == 0) {
        int fd = atoi(dev + 3);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        return fd;
    }
    /* The device may appear only once its driver module has loaded: retry
     * for about ten seconds before giving up. */
    for (int attempt = 0;; attempt++) {
        int fd = open(dev, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (fd >= 0)
            return fd;
        if (attempt >= 100) {
            fprintf(stderr, "pyapptron-agent: open %s: %s\n", dev, strerror(errno));
            exit(1);
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void setup_channel(void)
{
    if (isatty(chan)) {
        const char *name = ttyname(chan);
        if (name != NULL && strncmp(name, "/dev/ttyS", 9) == 0 && !use_hc)
            window_chunks = SERIAL_WINDOW_CHUNKS;
        /* Raw bytes both ways: no echo, no line discipline, no CR/LF
         * translation, reads return as soon as one byte is there. */
        struct termios t;
        if (tcgetattr(chan, &t) == 0) {
            cfmakeraw(&t);
            t.c_cc[VMIN] = 1;
            t.c_cc[VTIME] = 0;
            tcsetattr(chan, TCSANOW, &t);
        }
        /* Whatever arrived before we started belongs to no session. */
        tcflush(chan, TCIFLUSH);
    }
    set_nonblock(chan);
}

/* Children get fds 0-2 by dup2; if ours were closed, a pipe could land there
 * and dup2 onto itself would keep its close-on-exec flag.  Occupy them. */
static void ensure_std_fds(void)
{
    int fd;
    while ((fd = open("/dev/null", O_RDWR)) >= 0 && fd <= 2)
        ;
    if (fd > 2)
        close(fd);
}

static void setup_signals(void)
{
    signal(SIGPIPE, SIG_IGN); /* a child closing its stdin must not kill us */
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
        perror("pyapptron-agent: pipe");
        exit(1);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGCHLD, &sa, NULL);
    /* Orphans of our children (daemons started with &) become ours, so we
     * reap them instead of leaving zombies for an init that may not. */
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
}

/* ---- main loop ---------------------------------------------------------- */

struct watch {
    struct proc *p;
    int *fd;
    uint8_t type; /* G_STDOUT / G_STDERR, or 0 for stdin */
};

/* ---- after a snapshot resume ------------------------------------------- */
/*
 * Every machine resumed from one snapshot starts with the same clock (the moment
 * it was saved) and the same CRNG state.  The host runs this once, at once, with
 * its wall-clock time and fresh random bytes on stdin.  Writing to /dev/urandom
 * alone only mixes the input pool; RNDRESEEDCRNG makes the CRNG use it now
 * instead of within a minute.
 */
static int resumed(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pyapptron-agent --resumed SECONDS.NANOSECONDS [--drop-caches]\n");
        return 2;
    }
    int status = 0;
    char *end;
    struct timespec now = {0, 0};
    now.tv_sec = (time_t)strtoll(argv[2], &end, 10);
    if (*end == '.') {
        char digits[10] = "000000000";
        size_t len = strspn(end + 1, "0123456789");
        memcpy(digits, end + 1, len < 9 ? len : 9);
        now.tv_nsec = strtol(digits, NULL, 10);
        end += 1 + len;
    }
    if (*end != '\0' || now.tv_sec <= 0) {
        fprintf(stderr, "pyapptron-agent: bad time %s\n", argv[2]);
        return 2;
    }
    if (clock_settime(CLOCK_REALTIME, &now) != 0) {
        perror("pyapptron-agent: clock_settime");
        status = 1;
    }

    struct {
        struct rand_pool_info info;
        unsigned char bytes[512];
    } seed;
    ssize_t got = 0, r;
    while (got < (ssize_t)sizeof seed.bytes
           && (r = read(0, seed.bytes + got, sizeof seed.bytes - got)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        got += r;
    }
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        perror("pyapptron-agent: /dev/urandom");
        status = 1;
    } else {
        if (got > 0) {
            seed.info.entropy_count = (int)got * 8;
            seed.info.buf_size = (int)got;
            /* RNDADDENTROPY mixes and credits; fall back to a plain write (mix only). */
            if (ioctl(fd, RNDADDENTROPY, &seed.info) != 0 && write_all(fd, seed.bytes, (size_t)got) != 0) {
                perror("pyapptron-agent: adding entropy");
                status = 1;
            }
        }
        if (ioctl(fd, RNDRESEEDCRNG) != 0) {
            perror("pyapptron-agent: RNDRESEEDCRNG");
            status = 1;
        }
        close(fd);
    }
    explicit_bzero(seed.bytes, sizeof seed.bytes);

    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--drop-caches") == 0) {
            /* Files the host changed under the guest (a store restored into the 9p
             * tree) must not be served from what the snapshot had cached. */
            sync();
            int dc = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
            if (dc < 0 || write_all(dc, "3\n", 2) != 0) {
                perror("pyapptron-agent: drop_caches");
                status = 1;
            }
            if (dc >= 0)
                close(dc);
        } else {
            fprintf(stderr, "pyapptron-agent: unknown option %s\n", argv[i]);
            status = 2;
        }
    }
    return status;
}

/* ---- persistent layers: exact trees through stdin/stdout ------------------ */
/*
 * The host keeps parts of the guest's tree in the browser (the persist layers).
 * On an engine without a shared file system it reaches them through these three
 * commands, run over the agent's own exec.  All integers are little-endian.
 *
 * --tree-list [--upper DIR [--merged MNT]] ROOT...: every entry under each
 *   ROOT, pre-order, names sorted bytewise; a ROOT met inside another is left for
 *   its own walk.  With --upper, the walk is of DIR+ROOT, an overlayfs upper
 *   directory: only what differs from the image, with its whiteouts (kind 'w')
 *   and opaque directories (kind 'o').  MNT is where the overlay is mounted
 *   (default /: the guest's root), taken off ROOT before DIR goes in front.
 *   One record per entry:
 *     u8 kind ('d' 'o' 'f' 'l' 'w'), u32 mode, u32 uid, u32 gid, i64 mtime,
 *     u64 size, u64 inode, i64 ctime in ns, u32 + path (as the guest sees it),
 *     u32 + symlink target.
 * --tree-read: NUL-terminated paths on stdin; for each, i64 size (-1: not a
 *   regular file any more) then that many bytes (a file that shrank meanwhile
 *   is padded with zeros; its changed ctime makes the host read it again).
 * --tree-apply [--lower DIR [--merged MNT]]: operations on stdin, each
 *     u8 op, u32 mode, u32 uid, u32 gid, i64 mtime, u64 size, u32 + path,
 *     u32 + symlink target, then `size` bytes for 'F';
 *   'R' remove (recursively; no error if absent), 'V' revert to the image
 *   (remove, then copy DIR+path back if the image has it), 'D' directory
 *   (kept if one is there), 'F' regular file, 'L' symlink.  Missing parents are
 *   made.  Directory times are set last, deepest first, so that creating their
 *   entries does not change them.  A failed operation prints "path<TAB>reason"
 *   on stdout and the rest goes on; the exit status is then 1.
 */

#define TREE_IO (256u * 1024u)

static char **tree_roots;
static int n_tree_roots;
static const char *tree_upper; /* NULL: the tree itself */
static const char *tree_merged = "/";

/* A path under the overlay's mount point, as seen from inside its layer DIR. */
static char *in_layer(const char *layer, const char *path)
{
    size_t skip = strcmp(tree_merged, "/") == 0 ? 0 : strlen(tree_merged);
    if (skip && (strncmp(path, tree_merged, skip) != 0 || (path[skip] != '/' && path[skip] != '\0')))
        return NULL;
    char *out;
    return asprintf(&out, "%s%s", layer, path + skip) < 0 ? NULL : out;
}

/* [--upper|--lower DIR [--merged MNT]] at argv[i]: the DIR, and i moved past them. */
static const char *layer_option(int argc, char **argv, int *i, const char *name)
{
    const char *dir = NULL;
    if (*i + 1 < argc && strcmp(argv[*i], name) == 0) {
        dir = argv[*i + 1];
        *i += 2;
        if (*i + 1 < argc && strcmp(argv[*i], "--merged") == 0) {
            tree_merged = argv[*i + 1];
            *i += 2;
        }
    }
    return dir;
}
static FILE *tree_out;

static void tree_put(const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, tree_out) != n) {
        perror("pyapptron-agent: stdout");
        exit(1);
    }
}

static void tree_put_u32(uint32_t v) { uint8_t b[4]; put_u32(b, v); tree_put(b, 4); }
static void tree_put_u64(uint64_t v) { uint8_t b[8]; put_u64(b, v); tree_put(b, 8); }

static void tree_put_str(const char *s)
{
    size_t n = strlen(s);
    tree_put_u32((uint32_t)n);
    tree_put(s, n);
}

static int tree_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool tree_other_root(const char *path, const char *root)
{
    for (int i = 0; i < n_tree_roots; i++)
        if (strcmp(tree_roots[i], path) == 0 && strcmp(tree_roots[i], root) != 0)
            return true;
    return false;
}

/* One entry (name in the directory dirfd; at the top, AT_FDCWD and a whole path)
 * and, for a directory, what is under it.  Relative lookups: a path walk per call
 * is dear in an emulated guest. */
static void tree_walk(int at, const char *name, const char *path, const char *root)
{
    struct stat st;
    if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
        return; /* gone meanwhile */
    char kind;
    char target[4097] = "";
    int fd = -1;
    if (S_ISDIR(st.st_mode)) {
        fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        char v[2];
        kind = tree_upper && fd >= 0 && fgetxattr(fd, "trusted.overlay.opaque", v, sizeof v) == 1 && v[0] == 'y'
            ? 'o' : 'd';
    } else if (S_ISREG(st.st_mode)) {
        kind = 'f';
    } else if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlinkat(at, name, target, sizeof target - 1);
        if (n < 0)
            return;
        target[n] = '\0';
        kind = 'l';
    } else if (tree_upper && S_ISCHR(st.st_mode) && st.st_rdev == 0) {
        kind = 'w';
    } else {
        return; /* sockets, fifos, devices: not kept */
    }
    uint8_t k = (uint8_t)kind;
    tree_put(&k, 1);
    tree_put_u32((uint32_t)st.st_mode);
    tree_put_u32((uint32_t)st.st_uid);
    tree_put_u32((uint32_t)st.st_gid);
    tree_put_u64((uint64_t)(int64_t)st.st_mtim.tv_sec);
    tree_put_u64(kind == 'f' ? (uint64_t)st.st_size : 0);
    tree_put_u64((uint64_t)st.st_ino);
    tree_put_u64((uint64_t)((int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec));
    tree_put_str(path);
    tree_put_str(target);
    if (fd < 0)
        return;
    DIR *dir = fdopendir(fd);
    if (dir == NULL) {
        close(fd);
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(dir)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof *names);
            if (names == NULL) {
                perror("pyapptron-agent");
                exit(1);
            }
        }
        names[n++] = strdup(de->d_name);
    }
    qsort(names, n, sizeof *names, tree_cmp);
    for (size_t i = 0; i < n; i++) {
        char *child_path;
        if (asprintf(&child_path, "%s/%s", strcmp(path, "/") == 0 ? "" : path, names[i]) < 0) {
            perror("pyapptron-agent");
            exit(1);
        }
        if (!tree_other_root(child_path, root))
            tree_walk(dirfd(dir), names[i], child_path, root);
        free(child_path);
        free(names[i]);
    }
    free(names);
    closedir(dir);
}

static int tree_list(int argc, char **argv)
{
    int i = 2;
    tree_upper = layer_option(argc, argv, &i, "--upper");
    tree_roots = argv + i;
    n_tree_roots = argc - i;
    for (int r = 0; r < n_tree_roots; r++) {
        if (tree_roots[r][0] != '/') {
            fprintf(stderr, "pyapptron-agent: %s is not an absolute path\n", tree_roots[r]);
            return 2;
        }
        char *real = tree_upper ? in_layer(tree_upper, tree_roots[r]) : strdup(tree_roots[r]);
        if (real == NULL) {
            fprintf(stderr, "pyapptron-agent: %s is not under the overlay's mount point %s\n", tree_roots[r], tree_merged);
            return 2;
        }
        tree_walk(AT_FDCWD, real, tree_roots[r], tree_roots[r]);
        free(real);
    }
    return fflush(tree_out) == 0 ? 0 : 1;
}

static int tree_read(void)
{
    static uint8_t buf[TREE_IO];
    char *path = NULL;
    size_t cap = 0;
    while (getdelim(&path, &cap, '\0', stdin) > 0) {
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            tree_put_u64((uint64_t)(int64_t)-1);
            if (fd >= 0)
                close(fd);
            continue;
        }
        uint64_t left = (uint64_t)st.st_size;
        tree_put_u64(left);
        while (left > 0) {
            size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
            ssize_t got = read(fd, buf, want);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) { /* shrank (or failed) meanwhile: pad */
                memset(buf, 0, want);
                got = (ssize_t)want;
            }
            tree_put(buf, (size_t)got);
            left -= (uint64_t)got;
        }
        close(fd);
    }
    free(path);
    return fflush(tree_out) == 0 ? 0 : 1;
}

/* -- apply -- */

struct dir_time {
    char *path;
    int64_t mtime;
};
static struct dir_time *dir_times;
static size_t n_dir_times, dir_times_cap;
static int tree_failures;

static void defer_dir_time(const char *path, int64_t mtime)
{
    if (n_dir_times == dir_times_cap) {
        dir_times_cap = dir_times_cap ? dir_times_cap * 2 : 256;
        dir_times = realloc(dir_times, dir_times_cap * sizeof *dir_times);
        if (dir_times == NULL) {
            perror("pyapptron-agent");
            exit(1);
        }
    }
    dir_times[n_dir_times++] = (struct dir_time){strdup(path), mtime};
}

static void tree_fail(const char *path, const char *what, int err)
{
    fprintf(tree_out, "%s\t%s: %s\n", path, what, strerror(err));
    tree_failures++;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st; (void)ftw;
    if (flag == FTW_DP ? rmdir(path) : unlink(path))
        return errno == ENOENT ? 0 : -1;
    return 0;
}

/* rm -rf: 0 or an errno value. */
static int remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : errno;
    if (!S_ISDIR(st.st_mode))
        return unlink(path) == 0 || errno == ENOENT ? 0 : errno;
    return nftw(path, remove_one, 32, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : errno;
}

static void make_parents(const char *path)
{
    char *copy = strdup(path);
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        mkdir(copy, 0755);
        *p = '/';
    }
    free(copy);
}

static void set_link_times(const char *path, int64_t mtime)
{
    struct timespec t[2] = {{(time_t)mtime, 0}, {(time_t)mtime, 0}};
    utimensat(AT_FDCWD, path, t, AT_SYMLINK_NOFOLLOW);
}

/* Copies data between descriptors: 0 or an errno value. */
static int copy_fd(int in, int out, uint64_t size, bool pad)
{
    static uint8_t buf[TREE_IO];
    while (size > 0) {
        size_t want = size < sizeof buf ? (size_t)size : sizeof buf;
        ssize_t got = read(in, buf, want);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return errno;
        if (got == 0) {
            if (!pad)
                return EIO;
            memset(buf, 0, want);
            got = (ssize_t)want;
        }
        int err = out >= 0 ? write_all(out, buf, (size_t)got) : 0;
        if (err)
            return err;
        size -= (uint64_t)got;
    }
    return 0;
}

static int put_file(const char *path, uint32_t mode, uint32_t uid, uint32_t gid, int64_t mtime,
                    int in, uint64_t size, bool pad)
{
    int err = remove_tree(path);
    if (err)
        return err;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno;
    err = copy_fd(in, fd, size, pad);
    if (!err && fchown(fd, uid, gid) != 0)
        err = errno;
    if (!err && fchmod(fd, mode & 07777) != 0)
        err = errno;
    struct timespec t[2] = {{(time_t)mtime, 0}, {(time_t)mtime, 0}};
    if (!err && futimens(fd, t) != 0)
        err = errno;
    close(fd);
    return err;
}

/* Makes what `make` makes at path (it returns 0 or -1 with errno), first time
 * lucky: the usual case (a new entry in an existing directory) costs one call.
 * An entry in the way is removed; missing parents are made. */
static int create_entry(const char *path, int (*make)(const char *, const void *), const void *arg)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        if (make(path, arg) == 0)
            return 0;
        if (errno == EEXIST) {
            int err = remove_tree(path);
            if (err)
                return err;
        } else if (errno == ENOENT) {
            make_parents(path);
        } else {
            return errno;
        }
    }
    return errno;
}

static int make_dir(const char *path, const void *mode) { return mkdir(path, *(const mode_t *)mode); }
static int make_link(const char *path, const void *target) { return symlink(target, path); }
struct new_file {
    int fd;
    mode_t perm; /* a read-only mode still gives a writable descriptor when it creates */
};
static int make_file(const char *path, const void *arg)
{
    struct new_file *f = (struct new_file *)arg;
    f->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, f->perm);
    return f->fd < 0 ? -1 : 0;
}

/* The owner and the mode bits a creation under umask 0 did not set: only where needed
 * (each call is dear in an emulated guest). */
static int fix_owner_mode(const char *path, int fd, uint32_t mode, uint32_t uid, uint32_t gid, bool made_exact)
{
    /* made here (by root): owned by 0:0 already; one that was there may not be */
    if ((uid || gid || !made_exact) && (fd >= 0 ? fchown(fd, uid, gid) : lchown(path, uid, gid)) != 0)
        return errno;
    if ((!made_exact || (mode & 07000)) && (fd >= 0 ? fchmod(fd, mode & 07777) : chmod(path, mode & 07777)) != 0)
        return errno;
    return 0;
}

static int put_dir(const char *path, uint32_t mode, uint32_t uid, uint32_t gid, int64_t mtime)
{
    mode_t perm = mode & 0777;
    bool made = mkdir(path, perm) == 0;
    if (!made) {
        struct stat st;
        if (errno == EEXIST && lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
            /* kept: a directory is there (another layer's way in, or the image's) */
        } else {
            int err = errno == EEXIST ? remove_tree(path) : 0;
            if (err || (err = create_entry(path, make_dir, &perm)) != 0)
                return err;
            made = true;
        }
    }
    int err = fix_owner_mode(path, -1, mode, uid, gid, made);
    if (err)
        return err;
    defer_dir_time(path, mtime);
    return 0;
}

static int put_link(const char *path, const char *target, uint32_t uid, uint32_t gid, int64_t mtime)
{
    int err = create_entry(path, make_link, target);
    if (err)
        return err;
    if ((uid || gid) && lchown(path, uid, gid) != 0)
        return errno;
    set_link_times(path, mtime);
    return 0;
}

static const char *revert_from, *revert_to;

static int revert_one(const char *from, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)flag; (void)ftw;
    char *to;
    if (asprintf(&to, "%s%s", revert_to, from + strlen(revert_from)) < 0)
        return -1;
    int err = 0;
    if (S_ISDIR(st->st_mode)) {
        err = put_dir(to, st->st_mode, st->st_uid, st->st_gid, st->st_mtim.tv_sec);
    } else if (S_ISREG(st->st_mode)) {
        int in = open(from, O_RDONLY | O_CLOEXEC);
        err = in < 0 ? errno : put_file(to, st->st_mode, st->st_uid, st->st_gid, st->st_mtim.tv_sec,
                                        in, (uint64_t)st->st_size, true);
        if (in >= 0)
            close(in);
    } else if (S_ISLNK(st->st_mode)) {
        char target[4097];
        ssize_t n = readlink(from, target, sizeof target - 1);
        if (n < 0) {
            err = errno;
        } else {
            target[n] = '\0';
            err = put_link(to, target, st->st_uid, st->st_gid, st->st_mtim.tv_sec);
        }
    }
    if (err)
        tree_fail(to, "reverting to the image", err);
    free(to);
    return 0;
}

/* Reads past `size` bytes of stdin (the data of an operation not carried out). */
static bool skip_input(uint64_t size)
{
    static uint8_t buf[TREE_IO];
    while (size > 0) {
        size_t got = fread(buf, 1, size < sizeof buf ? (size_t)size : sizeof buf, stdin);
        if (got == 0) {
            fprintf(stderr, "pyapptron-agent: --tree-apply: the data ends early\n");
            return false;
        }
        size -= got;
    }
    return true;
}

static int tree_apply(int argc, char **argv)
{
    int i = 2;
    const char *lower = layer_option(argc, argv, &i, "--lower");
    umask(0); /* modes as the host gives them */
    uint8_t h[33];
    size_t got_header;
    while ((got_header = fread(h, 1, sizeof h, stdin)) == sizeof h) {
        uint8_t op = h[0];
        uint32_t mode = get_u32(h + 1), uid = get_u32(h + 5), gid = get_u32(h + 9);
        int64_t mtime = (int64_t)((uint64_t)get_u32(h + 13) | (uint64_t)get_u32(h + 17) << 32);
        uint64_t size = (uint64_t)get_u32(h + 21) | (uint64_t)get_u32(h + 25) << 32;
        uint32_t path_len = get_u32(h + 29);
        char *path = malloc((size_t)path_len + 1);
        uint8_t lb[4];
        if (path == NULL || fread(path, 1, path_len, stdin) != path_len || fread(lb, 1, 4, stdin) != 4) {
            fprintf(stderr, "pyapptron-agent: --tree-apply: the operations end mid-record\n");
            return 2;
        }
        path[path_len] = '\0';
        uint32_t link_len = get_u32(lb);
        char *target = malloc((size_t)link_len + 1);
        if (target == NULL || fread(target, 1, link_len, stdin) != link_len) {
            fprintf(stderr, "pyapptron-agent: --tree-apply: the operations end mid-record\n");
            return 2;
        }
        target[link_len] = '\0';
        int err = 0;
        const char *what = "";
        size_t plen = strlen(path);
        if (path[0] != '/' || strstr(path, "/../") != NULL || (plen >= 3 && strcmp(path + plen - 3, "/..") == 0)) {
            err = EINVAL;
            what = "not an absolute path";
            if (op == 'F' && !skip_input(size))
                return 2;
        } else if (op == 'R') {
            what = "removing";
            err = remove_tree(path);
        } else if (op == 'V') {
            what = "reverting to the image";
            err = remove_tree(path);
            char *from;
            struct stat st;
            if (!err && lower != NULL && (from = in_layer(lower, path)) != NULL) {
                if (lstat(from, &st) == 0) {
                    revert_from = from;
                    revert_to = path;
                    if (nftw(from, revert_one, 32, FTW_PHYS) != 0)
                        err = errno;
                }
                free(from);
            }
        } else {
            if (op == 'D') {
                what = "making the directory";
                err = put_dir(path, mode, uid, gid, mtime);
            } else if (op == 'L') {
                what = "making the symlink";
                err = put_link(path, target, uid, gid, mtime);
            } else if (op == 'F') {
                what = "writing the file";
                /* The data follows in stdin's buffer: read it through stdio. */
                struct new_file made = {-1, mode & 0777};
                err = create_entry(path, make_file, &made);
                int fd = made.fd;
                static uint8_t buf[TREE_IO];
                uint64_t left = size;
                while (left > 0) {
                    size_t want = left < sizeof buf ? (size_t)left : sizeof buf;
                    size_t got = fread(buf, 1, want, stdin);
                    if (got == 0) {
                        fprintf(stderr, "pyapptron-agent: --tree-apply: %s: its data ends early\n", path);
                        return 2;
                    }
                    if (fd >= 0 && !err)
                        err = write_all(fd, buf, got);
                    left -= got;
                }
                struct timespec t[2] = {{(time_t)mtime, 0}, {(time_t)mtime, 0}};
                if (fd >= 0) {
                    if (!err)
                        err = fix_owner_mode(path, fd, mode, uid, gid, true);
                    if (!err && futimens(fd, t) != 0)
                        err = errno;
                    close(fd);
                }
            } else {
                err = EINVAL;
                what = "unknown operation";
            }
        }
        if (err)
            tree_fail(path, what, err);
        free(path);
        free(target);
    }
    if (got_header != 0 || !feof(stdin)) {
        fprintf(stderr, "pyapptron-agent: --tree-apply: the operations end mid-record\n");
        return 2;
    }
    for (size_t i = n_dir_times; i-- > 0;) {
        set_link_times(dir_times[i].path, dir_times[i].mtime);
        free(dir_times[i].path);
    }
    fflush(tree_out);
    return tree_failures ? 1 : 0;
}

static int tree_command(int argc, char **argv)
{
    tree_out = stdout;
    setvbuf(stdout, NULL, _IOFBF, TREE_IO);
    if (strcmp(argv[1], "--tree-list") == 0)
        return tree_list(argc, argv);
    if (strcmp(argv[1], "--tree-read") == 0)
        return tree_read();
    return tree_apply(argc, argv);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--resumed") == 0)
        return resumed(argc, argv);
    if (argc > 1 && strncmp(argv[1], "--tree-", 7) == 0) {
        if (strcmp(argv[1], "--tree-list") && strcmp(argv[1], "--tree-read") && strcmp(argv[1], "--tree-apply")) {
            fprintf(stderr, "pyapptron-agent: unknown option %s\n", argv[1]);
            return 2;
        }
        return tree_command(argc, argv);
    }
    const char *dev = argc > 1 ? argv[1] : "/dev/hvc0";
    ensure_std_fds();
    setup_signals();
    /* (another file only for the agent's own tests, which run on a host) */
    const char *env_file = getenv("PYAPPTRON_ENVIRONMENT_FILE");
    load_environment(env_file != NULL ? env_file : "/etc/environment");
    rbuf = malloc(RBUF_CAP);
    if (rbuf == NULL) {
        perror("pyapptron-agent");
        return 1;
    }
    chan = open_channel(dev);
    setup_channel();
    send_hello();

    struct pollfd *pfds = NULL;
    struct watch *watches = NULL;
    size_t cap = 0;
    for (;;) {
        size_t want = 2 + 3 * nprocs;
        if (want > cap) {
            cap = want * 2;
            pfds = realloc(pfds, cap * sizeof *pfds);
            watches = realloc(watches, cap * sizeof *watches);
            if (pfds == NULL || watches == NULL) {
                perror("pyapptron-agent");
                return 1;
            }
        }
        size_t n = 0;
        pfds[n++] = (struct pollfd){.fd = chan, .events = POLLIN};
        pfds[n++] = (struct pollfd){.fd = sig_pipe[0], .events = POLLIN};
        for (size_t i = 0; i < nprocs; i++) {
            struct proc *p = procs[i];
            if (p->out_fd >= 0) {
                watches[n] = (struct watch){p, &p->out_fd, G_STDOUT};
                pfds[n++] = (struct pollfd){.fd = p->out_fd, .events = POLLIN};
            }
            if (p->err_fd >= 0) {
                watches[n] = (struct watch){p, &p->err_fd, G_STDERR};
                pfds[n++] = (struct pollfd){.fd = p->err_fd, .events = POLLIN};
            }
            if (p->in_fd >= 0 && p->inq_off < p->inq_len) {
                watches[n] = (struct watch){p, &p->in_fd, 0};
                pfds[n++] = (struct pollfd){.fd = p->in_fd, .events = POLLOUT};
            }
        }
        int timeout = -1;
        if (use_hc) {
            /* Say we sleep, then look once more: a host that queued bytes
             * before it saw the flag sent no wake-up. */
            hc.ctl[HC_SLEEPING] = 1;
            HC_BARRIER();
            if (hc_pending())
                timeout = 0;
        }
        int ready = poll(pfds, n, timeout);
        if (use_hc)
            hc.ctl[HC_SLEEPING] = 0;
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            perror("pyapptron-agent: poll");
            return 1;
        }
        /* Children's pipes first (never frees a proc), then exits (frees),
         * then the channel (may start new procs). */
        for (size_t i = 2; i < n; i++) {
            if (pfds[i].revents == 0 || *watches[i].fd != pfds[i].fd)
                continue;
            if (watches[i].type != 0)
                forward_output(watches[i].p, watches[i].fd, watches[i].type);
            else
                flush_stdin(watches[i].p);
        }
        if (pfds[1].revents != 0)
            reap_children();
        if (pfds[0].revents != 0 || (use_hc && hc_pending()))
            on_channel_readable();
    }
}
