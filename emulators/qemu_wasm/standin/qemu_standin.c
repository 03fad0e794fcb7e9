/*
 * A stand-in for a QEMU-Wasm build (qemu-system-x86_64 compiled with Emscripten),
 * built here with Debian's emscripten 3.1.6, because no Emscripten new enough for
 * QEMU-Wasm can be had on this machine. It is NOT an emulator. It honours the
 * contract a QEMU-Wasm page relies on, so pyapptron's qemu-wasm backend can be
 * tested end to end:
 *
 *   - argv is Module.arguments, with QEMU's option syntax; unknown options, a
 *     missing -kernel/-initrd/-drive file or -L directory end it with QEMU's
 *     messages and exit status 1;
 *   - its files are the Emscripten FS: what the page's preRun writes and what
 *     file_packager's load-*.js scripts unpack (under /pack);
 *   - its console is Module.pty (xterm-pty's slave): a boot log, then a small
 *     POSIX-like shell on "ttyS0" that the console-framed vm.run drives;
 *   - exit(status) ends it (the shell's `exit N` / `poweroff`), reported to the
 *     page by Module.onExit.
 *
 * main() runs in a pthread (-sPROXY_TO_PTHREAD), as QEMU-Wasm's does.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern int standin_pty_write(const char *buf, int len);
extern int standin_pty_read(char *buf, int len);
extern void standin_pty_wait(int *flag);
extern void standin_pty_watch_signals(int *counter);
extern void standin_pty_set_echo(int on);

#define PROG "qemu-system-x86_64"

/* ---- console output ---------------------------------------------------------- */

static void con_write(const char *s, size_t n) {
    while (n > 0) {
        int k = standin_pty_write(s, (int)(n > 4096 ? 4096 : n));
        s += k;
        n -= (size_t)k;
    }
}

/* printf into buf (4096 bytes), cut to fit; returns the length. */
static size_t vformat(char *buf, const char *fmt, va_list ap) {
    int n = vsnprintf(buf, 4096, fmt, ap);
    return n < 0 ? 0 : n > 4095 ? 4095 : (size_t)n;
}

static void con_printf(const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    size_t n = vformat(buf, fmt, ap);
    va_end(ap);
    con_write(buf, n);
}

/* ---- console input ----------------------------------------------------------- */

static int sigint_count;  /* bumped by the page when the pty's ^C raises SIGINT */
static char inbuf[8192];
static int inlen, inpos;

/* One byte of console input; blocks until there is one. */
static int con_getc(void) {
    while (inpos >= inlen) {
        inpos = 0;
        inlen = standin_pty_read(inbuf, sizeof inbuf);
        if (inlen > 0) break;
        int flag = 0;
        standin_pty_wait(&flag);
        while (__atomic_load_n(&flag, __ATOMIC_SEQ_CST) == 0)
            __builtin_wasm_memory_atomic_wait32(&flag, 0, -1);
    }
    return (unsigned char)inbuf[inpos++];
}

/* ---- QEMU's command line --------------------------------------------------------- */

static const char *opt_kernel, *opt_initrd, *opt_append = "", *opt_bios_dir, *opt_accel = "tcg";
static long opt_mem_mib = 128;
static const char *drives[8];
static int ndrives;
struct share { char tag[64]; char path[256]; char mounted_at[256]; };
static struct share shares[4];
static int nshares;

static int file_exists(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISREG(st.st_mode); }
static int dir_exists(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISDIR(st.st_mode); }

/* "key=value" out of a comma-separated option string, into out. */
static int suboption(const char *spec, const char *key, char *out, size_t outlen) {
    size_t klen = strlen(key);
    const char *p = spec;
    while (p && *p) {
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            p += klen + 1;
            size_t n = strcspn(p, ",");
            if (n >= outlen) n = outlen - 1;
            memcpy(out, p, n);
            out[n] = 0;
            return 1;
        }
        p = strchr(p, ',');
        if (p) p++;
    }
    return 0;
}

static void die_usage(const char *fmt, const char *arg) {
    con_printf(PROG ": ");
    con_printf(fmt, arg);
    con_printf("\n");
    exit(1);
}

static void parse_args(int argc, char **argv) {
    /* Options that take a value, and those that do not (QEMU's spellings). */
    static const char *with_value[] = {"-m", "-accel", "-M", "-machine", "-cpu", "-smp", "-L", "-kernel",
                                       "-initrd", "-append", "-drive", "-device", "-virtfs", "-nic", "-netdev",
                                       "-serial", "-chardev", "-bios", "-global", "-name", "-monitor", 0};
    static const char *flags[] = {"-nographic", "-no-reboot", "-snapshot", "-S", 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int known = 0;
        for (int k = 0; flags[k]; k++) if (!strcmp(a, flags[k])) known = 1;
        if (known) continue;
        for (int k = 0; with_value[k]; k++) if (!strcmp(a, with_value[k])) known = 2;
        if (!known) die_usage("%s: invalid option", a);
        if (i + 1 >= argc) die_usage("%s: requires an argument", a);
        const char *v = argv[++i];
        if (!strcmp(a, "-kernel")) opt_kernel = v;
        else if (!strcmp(a, "-initrd")) opt_initrd = v;
        else if (!strcmp(a, "-append")) opt_append = v;
        else if (!strcmp(a, "-L")) opt_bios_dir = v;
        else if (!strcmp(a, "-accel")) opt_accel = v;
        else if (!strcmp(a, "-m")) {
            char *end;
            opt_mem_mib = strtol(v, &end, 10);
            if (*end == 'G' || *end == 'g') opt_mem_mib *= 1024;
            else if (*end && *end != 'M' && *end != 'm') die_usage("-m %s: invalid size", v);
        } else if (!strcmp(a, "-drive")) {
            char file[256];
            if (!suboption(v, "file", file, sizeof file)) die_usage("-drive %s: no file= given", v);
            if (ndrives < 8) drives[ndrives++] = strdup(file);
        } else if (!strcmp(a, "-virtfs")) {
            if (nshares < 4) {
                struct share *s = &shares[nshares];
                if (strncmp(v, "local,", 6) || !suboption(v, "path", s->path, sizeof s->path) ||
                    !suboption(v, "mount_tag", s->tag, sizeof s->tag))
                    die_usage("-virtfs %s: needs local,path=DIR,mount_tag=TAG", v);
                nshares++;
            }
        }
    }
    if (!opt_kernel) die_usage("%s", "no -kernel given (the stand-in boots only a kernel)");
    if (opt_bios_dir && !dir_exists(opt_bios_dir))
        con_printf(PROG ": -L %s: warning: not a directory\n", opt_bios_dir);
    if (!file_exists(opt_kernel)) {
        con_printf(PROG ": could not open kernel file '%s': %s\n", opt_kernel, strerror(ENOENT));
        exit(1);
    }
    if (opt_initrd && !file_exists(opt_initrd)) {
        con_printf(PROG ": could not load initial ram disk '%s'\n", opt_initrd);
        exit(1);
    }
    for (int i = 0; i < ndrives; i++) {
        if (!file_exists(drives[i])) {
            con_printf(PROG ": -drive file=%s: Could not open '%s': %s\n", drives[i], drives[i], strerror(ENOENT));
            exit(1);
        }
    }
    for (int i = 0; i < nshares; i++) {
        if (!dir_exists(shares[i].path)) {
            con_printf(PROG ": -virtfs path=%s: cannot initialize fsdev: %s\n", shares[i].path, strerror(ENOENT));
            exit(1);
        }
    }
}

/* ---- CRC-32 (zlib's), so a test can check a file's bytes from the guest ----------- */

static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1)));
    }
    return ~crc;
}

static long file_crc(const char *path, uint32_t *crc) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned char buf[65536];
    size_t n;
    long total = 0;
    *crc = 0;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) { *crc = crc32_update(*crc, buf, n); total += (long)n; }
    fclose(f);
    return total;
}

static void boot_log(void) {
    uint32_t crc;
    long size = file_crc(opt_kernel, &crc);
    con_printf("SeaBIOS (stand-in for " PROG " on QEMU-Wasm; accel %s)\n", opt_accel);
    con_printf("Booting from ROM..\n");
    con_printf("[    0.000000] Linux version 6.1.0-standin (pyapptron qemu-wasm stand-in) x86_64\n");
    con_printf("[    0.000000] Command line: %s\n", opt_append);
    con_printf("[    0.000000] Memory: %ldM\n", opt_mem_mib);
    con_printf("[    0.000000] kernel: %s, %ld bytes, crc32 %08x\n", opt_kernel, size, crc);
    if (opt_initrd) {
        size = file_crc(opt_initrd, &crc);
        con_printf("[    0.000000] initrd: %s, %ld bytes, crc32 %08x\n", opt_initrd, size, crc);
    }
    for (int i = 0; i < ndrives; i++) {
        size = file_crc(drives[i], &crc);
        con_printf("[    0.100000] virtio_blk virtio%d: [vd%c] %ld bytes, crc32 %08x\n", i, 'a' + i, size, crc);
    }
    for (int i = 0; i < nshares; i++)
        con_printf("[    0.100000] 9pnet: mount tag %s (exported from %s)\n", shares[i].tag, shares[i].path);
    con_printf("[    0.200000] Run /init as init process\n\n");
}

/* ---- the shell ------------------------------------------------------------------- */

#define MAXW 256
struct out { int fd1, fd2; FILE *f1, *f2; };  /* fdN: 0 console, 1 file, 2 /dev/null */
static struct out cur = {0, 0, 0, 0};
static FILE *cur_in;  /* stdin redirected from a file, or NULL (console) */
static int last_status;
static int subshell_depth;
static int exit_requested = -1;  /* set by `exit`: unwinds to the enclosing (sub)shell */
static char cwd[512] = "/";

struct var { char name[64]; char *value; int exported; };
static struct var vars[128];
static int nvars;

static struct var *var_find(const char *name) {
    for (int i = 0; i < nvars; i++) if (!strcmp(vars[i].name, name)) return &vars[i];
    return 0;
}
static void var_set(const char *name, const char *value, int exported) {
    struct var *v = var_find(name);
    if (!v) {
        if (nvars == 128) return;
        v = &vars[nvars++];
        snprintf(v->name, sizeof v->name, "%s", name);
        v->value = 0;
    }
    free(v->value);
    v->value = strdup(value);
    if (exported) v->exported = 1;
}
static const char *var_get(const char *name) {
    struct var *v = var_find(name);
    return v ? v->value : "";
}

static void out_write(int fd, const char *s, size_t n) {
    int kind = fd == 2 ? cur.fd2 : cur.fd1;
    FILE *f = fd == 2 ? cur.f2 : cur.f1;
    if (kind == 0) con_write(s, n);
    else if (kind == 1) fwrite(s, 1, n, f);
}
static void out_str(int fd, const char *s) { out_write(fd, s, strlen(s)); }
static void out_printf(int fd, const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    size_t n = vformat(buf, fmt, ap);
    va_end(ap);
    out_write(fd, buf, n);
}

/* A guest path as the Emscripten FS path it is (9p mounts map onto -virtfs dirs). */
static void host_path(const char *path, char *out, size_t outlen) {
    char abs[1024];
    if (path[0] == '/') snprintf(abs, sizeof abs, "%s", path);
    else snprintf(abs, sizeof abs, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", path);
    for (int i = 0; i < nshares; i++) {
        size_t m = strlen(shares[i].mounted_at);
        if (m && !strncmp(abs, shares[i].mounted_at, m) && (abs[m] == 0 || abs[m] == '/')) {
            snprintf(out, outlen, "%s%s", shares[i].path, abs + m);
            return;
        }
    }
    snprintf(out, outlen, "%s", abs);
}

/* An interruptible sleep: ^C on the console ends it early (status 130). */
static int do_sleep(double seconds) {
    int seen = __atomic_load_n(&sigint_count, __ATOMIC_SEQ_CST);
    int64_t left_ns = (int64_t)(seconds * 1e9);
    while (left_ns > 0) {
        int64_t step = left_ns > 100000000 ? 100000000 : left_ns;
        __builtin_wasm_memory_atomic_wait32(&sigint_count, seen, step);
        if (__atomic_load_n(&sigint_count, __ATOMIC_SEQ_CST) != seen) return 130;
        left_ns -= step;
    }
    return 0;
}

static int run_list(const char *src);

/* printf's escapes (\n \t \\ \0NNN \xHH) in s, written out. */
static void put_escaped(int fd, const char *s) {
    for (; *s; s++) {
        char c = *s;
        if (c == '\\' && s[1]) {
            s++;
            switch (*s) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case '\\': c = '\\'; break;
            case '0': case '1': case '2': case '3': {
                int v = 0, k = 0;
                while (k < 3 && *s >= '0' && *s <= '7') { v = v * 8 + (*s - '0'); s++; k++; }
                s--;
                c = (char)v;
                break;
            }
            default: out_write(fd, "\\", 1); c = *s;
            }
        }
        out_write(fd, &c, 1);
    }
}

static int builtin_printf(int argc, char **argv) {
    if (argc < 2) { out_str(2, "printf: usage: printf FORMAT [ARG]...\n"); return 2; }
    const char *fmt = argv[1];
    int ai = 2;
    do {
        for (const char *p = fmt; *p; p++) {
            if (*p == '%' && p[1]) {
                p++;
                if (*p == '%') { out_write(1, "%", 1); continue; }
                const char *arg = ai < argc ? argv[ai++] : "";
                if (*p == 's') out_str(1, arg);
                else if (*p == 'b') put_escaped(1, arg);
                else if (*p == 'd' || *p == 'i') out_printf(1, "%ld", strtol(arg, 0, 10));
                else if (*p == 'x') out_printf(1, "%lx", strtol(arg, 0, 10));
                else { out_str(2, "printf: unsupported conversion\n"); return 1; }
            } else if (*p == '\\' && p[1]) {
                char one[3] = {p[0], p[1], 0};
                if (p[1] >= '0' && p[1] <= '7') {
                    char oct[6] = {'\\', 0};
                    int k = 1;
                    p++;
                    while (k < 5 && *p >= '0' && *p <= '7') oct[k++] = *p++;
                    oct[k] = 0;
                    p--;
                    put_escaped(1, oct);
                } else {
                    put_escaped(1, one);
                    p++;
                }
            } else out_write(1, p, 1);
        }
    } while (ai < argc && ai > 2);
    return 0;
}

static int builtin_cat(int argc, char **argv) {
    char buf[65536];
    size_t n;
    int status = 0;
    if (argc < 2) {
        if (!cur_in) return 0;  /* console stdin: nothing to read in a framed command */
        while ((n = fread(buf, 1, sizeof buf, cur_in)) > 0) out_write(1, buf, n);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        char p[1024];
        host_path(argv[i], p, sizeof p);
        FILE *f = fopen(p, "rb");
        if (!f) { out_printf(2, "cat: can't open '%s': %s\n", argv[i], strerror(errno)); status = 1; continue; }
        while ((n = fread(buf, 1, sizeof buf, f)) > 0) out_write(1, buf, n);
        fclose(f);
    }
    return status;
}

static int builtin_ls(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : ".";
    char p[1024];
    host_path(dir, p, sizeof p);
    DIR *d = opendir(p);
    if (!d) { out_printf(2, "ls: %s: %s\n", dir, strerror(errno)); return 1; }
    /* sorted, like ls */
    char *names[512];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 512) if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) { char *t = names[j]; names[j] = names[j - 1]; names[j - 1] = t; }
    for (int i = 0; i < n; i++) { out_printf(1, "%s\n", names[i]); free(names[i]); }
    return 0;
}

static int run_argv(int argc, char **argv);

static int builtin_env(int argc, char **argv) {
    /* env [-i] [NAME=VALUE]... [COMMAND [ARG]...] */
    int i = 1, clear = 0;
    if (i < argc && !strcmp(argv[i], "-i")) { clear = 1; i++; }
    struct var saved[128];
    int nsaved = nvars;
    for (int k = 0; k < nvars; k++) { saved[k] = vars[k]; saved[k].value = strdup(vars[k].value); }
    if (clear) for (int k = 0; k < nvars; k++) vars[k].exported = 0;
    for (; i < argc && strchr(argv[i], '=') && argv[i][0] != '='; i++) {
        char name[64];
        size_t n = (size_t)(strchr(argv[i], '=') - argv[i]);
        if (n >= sizeof name) n = sizeof name - 1;
        memcpy(name, argv[i], n);
        name[n] = 0;
        var_set(name, argv[i] + n + 1, 1);
    }
    int status = 0;
    if (i >= argc) {
        for (int k = 0; k < nvars; k++) if (vars[k].exported) out_printf(1, "%s=%s\n", vars[k].name, vars[k].value);
    } else status = run_argv(argc - i, argv + i);
    for (int k = 0; k < nvars; k++) free(vars[k].value);
    nvars = nsaved;
    for (int k = 0; k < nvars; k++) vars[k] = saved[k];
    return status;
}

static int run_argv(int argc, char **argv) {
    const char *c = argv[0];
    if (!strcmp(c, "true") || !strcmp(c, ":")) return 0;
    if (!strcmp(c, "false")) return 1;
    if (!strcmp(c, "echo")) {
        int i = 1, nl = 1;
        if (i < argc && !strcmp(argv[i], "-n")) { nl = 0; i++; }
        for (; i < argc; i++) { out_str(1, argv[i]); if (i + 1 < argc) out_write(1, " ", 1); }
        if (nl) out_write(1, "\n", 1);
        return 0;
    }
    if (!strcmp(c, "printf")) return builtin_printf(argc, argv);
    if (!strcmp(c, "cat")) return builtin_cat(argc, argv);
    if (!strcmp(c, "ls")) return builtin_ls(argc, argv);
    if (!strcmp(c, "env")) return builtin_env(argc, argv);
    if (!strcmp(c, "pwd")) { out_printf(1, "%s\n", cwd); return 0; }
    if (!strcmp(c, "cd")) {
        const char *to = argc > 1 ? argv[1] : "/root";
        if (argc > 2 && !strcmp(argv[1], "--")) to = argv[2];
        char p[1024];
        host_path(to, p, sizeof p);
        if (!dir_exists(p)) { out_printf(2, "sh: cd: can't cd to %s: No such file or directory\n", to); return 2; }
        if (to[0] == '/') snprintf(cwd, sizeof cwd, "%s", to);
        else { char t[512]; snprintf(t, sizeof t, "%s%s%s", cwd, strcmp(cwd, "/") ? "/" : "", to); snprintf(cwd, sizeof cwd, "%s", t); }
        return 0;
    }
    if (!strcmp(c, "uname")) {
        int all = argc > 1 && !strcmp(argv[1], "-a");
        const char *opt = argc > 1 ? argv[1] : "-s";
        if (all) { out_str(1, "Linux standin 6.1.0-standin #1 SMP x86_64 GNU/Linux\n"); return 0; }
        if (!strcmp(opt, "-m")) out_str(1, "x86_64\n");
        else if (!strcmp(opt, "-r")) out_str(1, "6.1.0-standin\n");
        else if (!strcmp(opt, "-n")) out_str(1, "standin\n");
        else out_str(1, "Linux\n");
        return 0;
    }
    if (!strcmp(c, "crc32")) {
        int status = 0;
        for (int i = 1; i < argc; i++) {
            char p[1024];
            uint32_t crc;
            host_path(argv[i], p, sizeof p);
            if (file_crc(p, &crc) < 0) { out_printf(2, "crc32: %s: %s\n", argv[i], strerror(errno)); status = 1; }
            else out_printf(1, "%08x\t%s\n", crc, argv[i]);
        }
        return status;
    }
    if (!strcmp(c, "sleep")) {
        if (argc < 2) { out_str(2, "sleep: missing operand\n"); return 1; }
        return do_sleep(atof(argv[1]));
    }
    if (!strcmp(c, "stty")) {
        for (int i = 1; i < argc; i++) {
            if (!strcmp(argv[i], "-echo")) standin_pty_set_echo(0);
            else if (!strcmp(argv[i], "echo")) standin_pty_set_echo(1);
        }
        return 0;
    }
    if (!strcmp(c, "export")) {
        for (int i = 1; i < argc; i++) {
            char *eq = strchr(argv[i], '=');
            if (eq) { *eq = 0; var_set(argv[i], eq + 1, 1); *eq = '='; }
            else { struct var *v = var_find(argv[i]); if (v) v->exported = 1; }
        }
        return 0;
    }
    if (!strcmp(c, "mount")) {
        /* mount -t 9p [-o OPTS] TAG DIR */
        const char *tag = 0, *dir = 0;
        for (int i = 1; i < argc; i++) {
            if (!strcmp(argv[i], "-t") || !strcmp(argv[i], "-o")) { i++; continue; }
            if (!tag) tag = argv[i]; else dir = argv[i];
        }
        for (int i = 0; tag && dir && i < nshares; i++) {
            if (!strcmp(shares[i].tag, tag)) { snprintf(shares[i].mounted_at, sizeof shares[i].mounted_at, "%s", dir); return 0; }
        }
        out_printf(2, "mount: mounting %s on %s failed: No such device\n", tag ? tag : "?", dir ? dir : "?");
        return 255;
    }
    if (!strcmp(c, "mkdir")) return 0;  /* mount points: the stand-in's guest tree is virtual */
    if (!strcmp(c, "sh") || !strcmp(c, "/bin/sh")) {
        if (argc >= 3 && !strcmp(argv[1], "-c")) {
            subshell_depth++;
            int status = run_list(argv[2]);
            if (exit_requested >= 0) { status = exit_requested; exit_requested = -1; }
            subshell_depth--;
            return status;
        }
        out_str(2, "sh: the stand-in's shell runs only `sh -c STRING`\n");
        return 2;
    }
    if (!strcmp(c, "exit") || !strcmp(c, "poweroff")) {
        int status = !strcmp(c, "poweroff") ? 0 : (argc > 1 ? atoi(argv[1]) : last_status);
        if (subshell_depth == 0) {
            if (!strcmp(c, "poweroff")) con_printf("[   10.000000] reboot: Power down\n");
            exit(status);
        }
        exit_requested = status & 255;
        return status & 255;
    }
    out_printf(2, "sh: %s: not found\n", c);
    return 127;
}

/* ---- parsing ------------------------------------------------------------------ */

struct lexer { const char *p; };

static void skip_blanks(struct lexer *lx) { while (*lx->p == ' ' || *lx->p == '\t') lx->p++; }

/* Appends the expansion of $NAME / ${NAME} / $? at *p to out. */
static void expand_dollar(const char **pp, char *out, size_t *len, size_t cap) {
    const char *p = *pp + 1;
    char name[64];
    size_t n = 0;
    const char *val;
    char num[16];
    if (*p == '?') { snprintf(num, sizeof num, "%d", last_status); val = num; p++; }
    else if (*p == '{') {
        p++;
        while (*p && *p != '}' && n < sizeof name - 1) name[n++] = *p++;
        if (*p == '}') p++;
        name[n] = 0;
        val = var_get(name);
    } else if (isalpha((unsigned char)*p) || *p == '_') {
        while ((isalnum((unsigned char)*p) || *p == '_') && n < sizeof name - 1) name[n++] = *p++;
        name[n] = 0;
        val = var_get(name);
    } else { val = "$"; }
    for (; *val && *len < cap - 1; val++) out[(*len)++] = *val;
    *pp = p;
}

/* One word (quotes removed, $ expanded). Returns 0 at an operator or the end. */
static int next_word(struct lexer *lx, char *out, size_t cap) {
    skip_blanks(lx);
    const char *p = lx->p;
    if (!*p || strchr(";&|()\n", *p)) return 0;
    size_t len = 0;
    /* '&' ends a word, except right after '>' (the N>&M of a redirection) */
    while (*p && (!strchr(" \t;&|()\n", *p) || (*p == '&' && len > 0 && out[len - 1] == '>'))) {
        if (*p == '\'') {
            p++;
            while (*p && *p != '\'') { if (len < cap - 1) out[len++] = *p; p++; }
            if (*p) p++;
        } else if (*p == '"') {
            p++;
            while (*p && *p != '"') {
                if (*p == '\\' && (p[1] == '"' || p[1] == '\\' || p[1] == '$')) { p++; if (len < cap - 1) out[len++] = *p++; }
                else if (*p == '$') expand_dollar(&p, out, &len, cap);
                else { if (len < cap - 1) out[len++] = *p; p++; }
            }
            if (*p) p++;
        } else if (*p == '\\' && p[1]) {
            p++;
            if (len < cap - 1) out[len++] = *p;
            p++;
        } else if (*p == '$') expand_dollar(&p, out, &len, cap);
        else { if (len < cap - 1) out[len++] = *p; p++; }
    }
    out[len] = 0;
    lx->p = p;
    return 1;
}

/* Finds the ')' that closes the '(' just before p (quotes respected). */
static const char *matching_paren(const char *p) {
    int depth = 1;
    while (*p) {
        if (*p == '\'') { p++; while (*p && *p != '\'') p++; }
        else if (*p == '"') { p++; while (*p && *p != '"') { if (*p == '\\' && p[1]) p++; p++; } }
        else if (*p == '\\' && p[1]) p++;
        else if (*p == '(') depth++;
        else if (*p == ')' && --depth == 0) return p;
        if (*p) p++;
    }
    return 0;
}

/* Redirections of one command: N>file, N>>file, <file, N>&M, N>/dev/null. */
static int apply_redirect(const char *w, struct out *o, FILE **in, int *handled) {
    *handled = 0;
    int fd = 1;
    const char *p = w;
    if (*p == '<') {
        *handled = 1;
        if (!strcmp(p + 1, "/dev/null") || !p[1]) { *in = 0; return 0; }
        char hp[1024];
        host_path(p + 1, hp, sizeof hp);
        *in = fopen(hp, "rb");
        if (!*in) { out_printf(2, "sh: can't open %s: %s\n", p + 1, strerror(errno)); return 1; }
        return 0;
    }
    if (isdigit((unsigned char)*p) && p[1] == '>') { fd = *p - '0'; p++; }
    if (*p != '>') return 0;
    *handled = 1;
    p++;
    int append = 0;
    if (*p == '>') { append = 1; p++; }
    int kind;
    FILE *f = 0;
    if (*p == '&') {
        int target = p[1] - '0';
        kind = target == 2 ? o->fd2 : o->fd1;
        f = target == 2 ? o->f2 : o->f1;
    } else if (!strcmp(p, "/dev/null")) kind = 2;
    else {
        char hp[1024];
        host_path(p, hp, sizeof hp);
        f = fopen(hp, append ? "ab" : "wb");
        if (!f) { out_printf(2, "sh: can't create %s: %s\n", p, strerror(errno)); return 1; }
        kind = 1;
    }
    if (fd == 2) { o->fd2 = kind; o->f2 = f; } else { o->fd1 = kind; o->f1 = f; }
    return 0;
}

/* Runs one command starting at lx->p; stops before ; && || or the end. */
static int run_command(struct lexer *lx) {
    skip_blanks(lx);
    struct out saved = cur;
    FILE *saved_in = cur_in;
    int status;
    if (*lx->p == '(') {
        const char *close = matching_paren(lx->p + 1);
        if (!close) { out_str(2, "sh: syntax error: unterminated (\n"); return 2; }
        size_t n = (size_t)(close - lx->p - 1);
        char *inner = malloc(n + 1);
        memcpy(inner, lx->p + 1, n);
        inner[n] = 0;
        lx->p = close + 1;
        /* redirections after the group apply to all of it */
        char w[1024];
        struct lexer look = *lx;
        FILE *opened[4];
        int nopened = 0;
        while (next_word(&look, w, sizeof w)) {
            int handled;
            struct out before = cur;
            if (apply_redirect(w, &cur, &cur_in, &handled)) { free(inner); cur = saved; return 1; }
            if (!handled) break;
            if (cur.f1 != before.f1 && cur.fd1 == 1 && nopened < 4) opened[nopened++] = cur.f1;
            if (cur.f2 != before.f2 && cur.fd2 == 1 && nopened < 4) opened[nopened++] = cur.f2;
            lx->p = look.p;
        }
        /* a subshell: its cwd, variables and `exit` stay inside */
        char saved_cwd[512];
        memcpy(saved_cwd, cwd, sizeof cwd);
        subshell_depth++;
        status = run_list(inner);
        if (exit_requested >= 0) { status = exit_requested; exit_requested = -1; }
        subshell_depth--;
        memcpy(cwd, saved_cwd, sizeof cwd);
        free(inner);
        for (int i = 0; i < nopened; i++) fclose(opened[i]);
        if (cur_in && cur_in != saved_in) fclose(cur_in);
        cur = saved;
        cur_in = saved_in;
        return status;
    }
    char *argv[MAXW];
    int argc = 0;
    char w[4096];
    FILE *opened[4];
    int nopened = 0;
    int assign_only = 1;
    char *assigns[32];
    int nassign = 0;
    while (argc < MAXW - 1 && next_word(lx, w, sizeof w)) {
        int handled;
        struct out before = cur;
        if (apply_redirect(w, &cur, &cur_in, &handled)) { status = 1; goto done; }
        if (handled) {
            if (cur.f1 != before.f1 && cur.fd1 == 1 && nopened < 4) opened[nopened++] = cur.f1;
            if (cur.f2 != before.f2 && cur.fd2 == 1 && nopened < 4) opened[nopened++] = cur.f2;
            continue;
        }
        char *eq = strchr(w, '=');
        if (argc == 0 && eq && eq != w && nassign < 32) { assigns[nassign++] = strdup(w); continue; }
        assign_only = 0;
        argv[argc++] = strdup(w);
    }
    argv[argc] = 0;
    for (int i = 0; i < nassign; i++) {
        char *eq = strchr(assigns[i], '=');
        *eq = 0;
        var_set(assigns[i], eq + 1, 0);
        free(assigns[i]);
    }
    status = argc ? run_argv(argc, argv) : (assign_only ? 0 : 0);
    for (int i = 0; i < argc; i++) free(argv[i]);
done:
    for (int i = 0; i < nopened; i++) fclose(opened[i]);
    if (cur_in && cur_in != saved_in) fclose(cur_in);
    cur = saved;
    cur_in = saved_in;
    return status;
}

/* list: and-or lists separated by ; or newlines. */
static int run_list(const char *src) {
    struct lexer lx = {src};
    int status = 0;
    for (;;) {
        skip_blanks(&lx);
        while (*lx.p == ';' || *lx.p == '\n') { lx.p++; skip_blanks(&lx); }
        if (!*lx.p) break;
        if (*lx.p == '|' && lx.p[1] != '|') { out_str(2, "sh: pipes are not supported by the stand-in's shell\n"); return 2; }
        status = run_command(&lx);
        last_status = status;
        if (exit_requested >= 0) return exit_requested;
        skip_blanks(&lx);
        while (*lx.p == '&' && lx.p[1] == '&') {
            lx.p += 2;
            if (status == 0) { status = run_command(&lx); last_status = status; }
            else { struct lexer skip = lx; char w[4096]; while (next_word(&skip, w, sizeof w)) {} if (*skip.p == '(') { const char *c = matching_paren(skip.p + 1); skip.p = c ? c + 1 : skip.p + strlen(skip.p); } lx = skip; }
            if (exit_requested >= 0) return exit_requested;
            skip_blanks(&lx);
        }
        while (*lx.p == '|' && lx.p[1] == '|') {
            lx.p += 2;
            if (status != 0) { status = run_command(&lx); last_status = status; }
            else { struct lexer skip = lx; char w[4096]; while (next_word(&skip, w, sizeof w)) {} if (*skip.p == '(') { const char *c = matching_paren(skip.p + 1); skip.p = c ? c + 1 : skip.p + strlen(skip.p); } lx = skip; }
            if (exit_requested >= 0) return exit_requested;
            skip_blanks(&lx);
        }
        if (*lx.p == '&' || *lx.p == '|' || *lx.p == ')') {
            out_printf(2, "sh: syntax error near '%c'\n", *lx.p);
            return 2;
        }
    }
    return status;
}

int main(int argc, char **argv) {
    standin_pty_watch_signals(&sigint_count);
    parse_args(argc, argv);
    boot_log();
    var_set("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
    var_set("HOME", "/root", 1);
    mkdir("/root", 0755);
    snprintf(cwd, sizeof cwd, "/root");
    static char line[65536];
    for (;;) {
        con_write("~ # ", 4);
        size_t n = 0;
        int c;
        while ((c = con_getc()) != '\n') {
            if (c == 4 && n == 0) { con_write("\n", 1); exit(0); }  /* ^D at an empty line */
            if (n < sizeof line - 1) line[n++] = (char)c;
        }
        line[n] = 0;
        last_status = run_list(line);
    }
}
