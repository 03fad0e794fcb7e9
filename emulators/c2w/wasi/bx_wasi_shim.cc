/* Runtime support for building Bochs as a WASI (preview1) module with
 * Debian's wasi-libc and libc++abi (wasm32).  pyapptron's own code.
 *
 * 1. longjmp() replacement.  wasi-libc has no setjmp/longjmp.  Bochs uses
 *    longjmp() to abandon the current instruction after a CPU exception and
 *    to quit the simulator from anywhere.  Here longjmp() throws a
 *    WebAssembly exception (-mexception-handling) with the C++ tag (tag 0)
 *    and bx_wasi_catch_longjmp() catches it; the former setjmp() sites in
 *    Bochs are patched to call that.  This file is the only one compiled with
 *    -fwasm-exceptions; Bochs itself uses -fno-exceptions.
 *
 * 2. A minimal C++ catch runtime.  Debian's wasm32 libc++abi is built without
 *    exception support, so the entry points that clang emits for
 *    `catch (...)` and `throw;` (__cxa_begin_catch, __cxa_end_catch,
 *    __cxa_rethrow) do not exist.  Only catch (...) is supported: nothing in
 *    this build throws a typed C++ exception, so there is no personality
 *    routine and no type matching.
 *
 * 3. Single-threaded pthread/semaphore stubs (nothing starts a thread here).
 * 4. tmpfile(), which wasi-libc does not implement.
 * 5. fopen("")/open("") -> ENOENT, via -Wl,--wrap (wasi-libc opens the
 *    preopened directory instead).
 */
#include <stddef.h>

/* Compiled as C++ with -fwasm-exceptions: clang 14 cannot emit a C object
 * that throws (it declares the __cpp_exception tag as an undefined weak
 * symbol and aborts with "undefined tag symbol cannot be weak"). */
extern "C" {

/* Payload (the jmp_buf) and value of the longjmp() being handled. */
static void *bx_wasi_current_payload;
static int bx_wasi_pending_val;
static int bx_wasi_current_val;

__attribute__((noreturn)) void longjmp(void *env, int val)
{
  bx_wasi_pending_val = val ? val : 1; /* like longjmp: 0 becomes 1 */
  __builtin_wasm_throw(0, env);
}

/* The one try/catch of the build.  Kept free of loops on purpose: V8 in
 * Node 20 crashed (SIGSEGV) in TurboFan-compiled code when wasm exception
 * handling was spread over Bochs' loops. */
int bx_wasi_catch_longjmp(void *env, int (*fn)(void *), void *arg, int *ret)
{
  try {
    int r = fn(arg);
    if (ret) *ret = r;
    return 0;
  } catch (...) {
    if (bx_wasi_current_payload != env) throw;
    return bx_wasi_current_val;
  }
}

/* clang calls this on entry to a catch block with the exception payload. */
void *__cxa_begin_catch(void *payload)
{
  /* Every wasm exception with tag 0 in this module comes from longjmp(). */
  bx_wasi_current_payload = payload;
  bx_wasi_current_val = bx_wasi_pending_val;
  return payload;
}

/* Called when a catch block is left (normally or by rethrow): nothing to free
 * because longjmp() exceptions carry a pointer, not an allocated object. */
void __cxa_end_catch(void)
{
}

/* `throw;` inside catch (...): throw the same payload again. */
__attribute__((noreturn)) void __cxa_rethrow(void)
{
  __builtin_wasm_throw(0, bx_wasi_current_payload);
}

} /* extern "C" */

/* ---- 3. Single-threaded pthread and semaphore stubs (see include/pthread.h). */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>

extern "C" {

int pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *) { return ENOSYS; }
int pthread_join(pthread_t, void **) { return ESRCH; }
int pthread_detach(pthread_t) { return ESRCH; }
void pthread_exit(void *) { __builtin_trap(); } /* only a started thread could call it */
int pthread_cancel(pthread_t) { return ESRCH; }
pthread_t pthread_self(void) { return 0; }
int pthread_equal(pthread_t a, pthread_t b) { return a == b; }

int pthread_attr_init(pthread_attr_t *) { return 0; }
int pthread_attr_destroy(pthread_attr_t *) { return 0; }
int pthread_attr_setdetachstate(pthread_attr_t *, int) { return 0; }

int pthread_mutex_init(pthread_mutex_t *, const pthread_mutexattr_t *) { return 0; }
int pthread_mutex_destroy(pthread_mutex_t *) { return 0; }
int pthread_mutex_lock(pthread_mutex_t *) { return 0; }
int pthread_mutex_trylock(pthread_mutex_t *) { return 0; }
int pthread_mutex_unlock(pthread_mutex_t *) { return 0; }

int pthread_cond_init(pthread_cond_t *, const pthread_condattr_t *) { return 0; }
int pthread_cond_destroy(pthread_cond_t *) { return 0; }
int pthread_cond_signal(pthread_cond_t *) { return 0; }
int pthread_cond_broadcast(pthread_cond_t *) { return 0; }
/* With one thread nobody could ever signal: report a spurious wakeup. */
int pthread_cond_wait(pthread_cond_t *, pthread_mutex_t *) { return 0; }
int pthread_cond_timedwait(pthread_cond_t *, pthread_mutex_t *, const struct timespec *) { return ETIMEDOUT; }

int pthread_once(pthread_once_t *once, void (*fn)(void))
{
  if (!*once) { *once = 1; fn(); }
  return 0;
}

/* wasi-libc declares these in semaphore.h but does not implement them.
 * A counter is enough with a single thread; waiting on zero would block
 * forever, so it fails with EDEADLK instead. */
int sem_init(sem_t *s, int, unsigned v) { s->__val[0] = (int)v; return 0; }
int sem_destroy(sem_t *) { return 0; }
int sem_post(sem_t *s) { s->__val[0]++; return 0; }
int sem_trywait(sem_t *s)
{
  if (s->__val[0] > 0) { s->__val[0]--; return 0; }
  errno = EAGAIN;
  return -1;
}
int sem_wait(sem_t *s)
{
  if (sem_trywait(s) == 0) return 0;
  errno = EDEADLK;
  return -1;
}
int sem_getvalue(sem_t *__restrict s, int *__restrict v) { *v = s->__val[0]; return 0; }

} /* extern "C" */

/* ---- 4. tmpfile(): wasi-libc leaves it undefined ("no temp directories").
 * Bochs uses it for the guest-memory overflow file and for restoring saved
 * state.  Create an anonymous file in the current (preopened) directory. */
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

extern "C" {

FILE *tmpfile(void)
{
  static unsigned counter;
  char name[64];
  for (int tries = 0; tries < 1000; tries++) {
    snprintf(name, sizeof(name), ".bochs-tmp-%u", counter++);
    int fd = open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
      if (errno == EEXIST) continue;
      return NULL;
    }
    unlink(name); /* gone once closed; the descriptor stays usable */
    FILE *f = fdopen(fd, "w+b");
    if (!f) close(fd);
    return f;
  }
  return NULL;
}

} /* extern "C" */

/* ---- 5. fopen("") / open("").  POSIX says an empty path is ENOENT, but
 * wasi-libc resolves "" to the preopened directory itself and opens it.
 * Bochs calls fopen() with empty option strings (for example the
 * configurable-MSR file in cpu/init.cc), gets a directory, and its fgets()
 * loop in load_MSRs() never sees EOF: an endless loop at start-up.  The
 * build links with -Wl,--wrap=fopen -Wl,--wrap=open so that every caller in
 * Bochs gets these instead. */
#include <stdarg.h>

extern "C" {

FILE *__real_fopen(const char *__restrict, const char *__restrict);
int __real_open(const char *, int, ...);

FILE *__wrap_fopen(const char *__restrict path, const char *__restrict mode)
{
  if (path && !*path) { errno = ENOENT; return NULL; }
  return __real_fopen(path, mode);
}

int __wrap_open(const char *path, int flags, ...)
{
  if (path && !*path) { errno = ENOENT; return -1; }
  int mode = 0;
  if (flags & O_CREAT) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, int);
    va_end(ap);
  }
  return __real_open(path, flags, mode);
}

} /* extern "C" */
