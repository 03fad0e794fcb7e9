/* setjmp.h stand-in for building Bochs against Debian's wasi-libc (which has
 * no setjmp.h at all: WASI has no way to save and restore the stack).
 *
 * pyapptron's own shim (emulators/c2w), not part of Bochs or wasi-libc.
 *
 * How it works: longjmp(env, val) throws a WebAssembly exception (tag 0, the
 * C++ exception tag) whose payload is `env`.  There is deliberately no
 * setjmp(): each place in Bochs that called setjmp() is patched (see
 * emulators/c2w/patches/) to run the code that followed it through
 * bx_wasi_catch_longjmp(), the only function of the build with a try/catch
 * (bx_wasi_shim.cc).  Bochs itself is compiled with -fno-exceptions, so no
 * destructors run while unwinding, just as with a real longjmp().  Leaving
 * setjmp undeclared makes any unpatched caller fail to compile instead of
 * misbehaving at run time.
 */
#ifndef BX_WASI_SETJMP_H
#define BX_WASI_SETJMP_H

#ifdef __cplusplus
extern "C" {
#endif

/* Only the address of a jmp_buf matters; the contents are unused. */
typedef struct bx_wasi_jmp_buf_tag { int unused; } jmp_buf[1];

/* Throws; never returns. `val` is kept for bx_wasi_longjmp_value(). */
__attribute__((noreturn)) void longjmp(jmp_buf env, int val);

/* Calls fn(arg).  If fn returns, stores its result in *ret (when ret is not
 * NULL) and returns 0.  If code below fn calls longjmp(env, val), the stack
 * is unwound back to here and val (never 0) is returned.  A longjmp() to any
 * other jmp_buf passes through to the bx_wasi_catch_longjmp() that owns it. */
int bx_wasi_catch_longjmp(jmp_buf env, int (*fn)(void *), void *arg, int *ret);

#ifdef __cplusplus
}
#endif

#endif /* BX_WASI_SETJMP_H */
