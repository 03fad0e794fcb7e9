/* wasi_probe: a small interactive WASI program that exercises the c2w backend's
 * WASI host (emulators/c2w/worker.mjs) the way a container2wasm module uses it:
 * a console on stdin/stdout/stderr, preopened directories, poll with a timeout,
 * an exit status.  Built by emulators/c2w/build_image.py with Debian's clang-14 and
 * wasi-libc; tests/test_browser_c2w.py drives it through boot("c2w", wasm=...).
 *
 * It prints "probe> " and reads one command per line:
 *   echo TEXT         TEXT on stdout
 *   err TEXT          TEXT on stderr
 *   args              each argv entry on its own line
 *   env NAME          the variable's value, or "(unset)"
 *   cat PATH          the file's bytes
 *   write PATH TEXT   creates or replaces PATH with TEXT
 *   ls DIR            the directory's entries, sorted, one per line
 *   poll MS           says "poll: waiting up to MS ms", waits for stdin with a
 *                     timeout: "poll: timeout after N ms"
 *                     or "poll: readable"
 *   exit N            ends with status N
 * At end of input it prints "probe: eof" and ends with status 0.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int compare(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_dir(const char *path)
{
    DIR *d = opendir(path);
    if (d == NULL) {
        printf("ls: %s: %s\n", path, strerror(errno));
        return;
    }
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], compare);
    for (size_t i = 0; i < n; i++) {
        printf("%s\n", names[i]);
        free(names[i]);
    }
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    char line[4096];
    for (;;) {
        fputs("probe> ", stdout);
        fflush(stdout);
        if (fgets(line, sizeof line, stdin) == NULL) {
            printf("probe: eof\n");
            return 0;
        }
        line[strcspn(line, "\r\n")] = 0;
        char *arg = strchr(line, ' ');
        if (arg != NULL)
            *arg++ = 0;
        else
            arg = line + strlen(line);
        if (!strcmp(line, "echo")) {
            printf("%s\n", arg);
        } else if (!strcmp(line, "err")) {
            fprintf(stderr, "%s\n", arg);
        } else if (!strcmp(line, "args")) {
            for (int i = 0; i < argc; i++)
                printf("%s\n", argv[i]);
        } else if (!strcmp(line, "env")) {
            const char *v = getenv(arg);
            printf("%s\n", v ? v : "(unset)");
        } else if (!strcmp(line, "cat")) {
            FILE *f = fopen(arg, "rb");
            if (f == NULL) {
                printf("cat: %s: %s\n", arg, strerror(errno));
                continue;
            }
            char buf[4096];
            size_t n;
            while ((n = fread(buf, 1, sizeof buf, f)) > 0)
                fwrite(buf, 1, n, stdout);
            fclose(f);
        } else if (!strcmp(line, "write")) {
            char *text = strchr(arg, ' ');
            if (text != NULL)
                *text++ = 0;
            FILE *f = fopen(arg, "wb");
            if (f == NULL) {
                printf("write: %s: %s\n", arg, strerror(errno));
                continue;
            }
            fputs(text ? text : "", f);
            fclose(f);
            printf("wrote %s\n", arg);
        } else if (!strcmp(line, "ls")) {
            list_dir(*arg ? arg : ".");
        } else if (!strcmp(line, "poll")) {
            int ms = atoi(arg);
            struct pollfd p = {.fd = 0, .events = POLLIN};
            /* Said first, so that a test knows when its input comes during the wait. */
            printf("poll: waiting up to %d ms\n", ms);
            fflush(stdout);
            double t0 = now_ms();
            int r = poll(&p, 1, ms);
            if (r == 0)
                printf("poll: timeout after %d ms\n", (int)(now_ms() - t0 + 0.5));
            else if (r > 0)
                printf("poll: readable\n");
            else
                printf("poll: %s\n", strerror(errno));
        } else if (!strcmp(line, "exit")) {
            fflush(stdout);
            exit(atoi(arg));
        } else if (*line) {
            printf("unknown command: %s\n", line);
        }
    }
}
