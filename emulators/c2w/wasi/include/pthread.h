/* pthread.h stand-in for building Bochs against Debian's wasi-libc, which has
 * no threads (wasm32-wasi, WASI preview1).  pyapptron's own shim.
 *
 * Bochs' configure insists on pthreads and bxthread.cc/logio.cc use mutexes,
 * condition variables and semaphores, but in this build (no GUI thread, no
 * sound, no network, no SMP) nothing ever starts a second thread.  So:
 * mutexes and condition variables are no-ops, and pthread_create() fails with
 * ENOSYS so that any unexpected thread user notices instead of deadlocking.
 * The functions live in bx_wasi_shim.cc.
 */
#ifndef BX_WASI_PTHREAD_H
#define BX_WASI_PTHREAD_H

#define __NEED_pthread_t
#define __NEED_pthread_attr_t
#define __NEED_pthread_mutex_t
#define __NEED_pthread_mutexattr_t
#define __NEED_pthread_cond_t
#define __NEED_pthread_condattr_t
#define __NEED_pthread_once_t
#define __NEED_pthread_key_t
#define __NEED_struct_timespec
#define __NEED_time_t
#include <bits/alltypes.h>
#include <sched.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PTHREAD_MUTEX_INITIALIZER {{{0}}}
#define PTHREAD_COND_INITIALIZER {{{0}}}
#define PTHREAD_ONCE_INIT 0
#define PTHREAD_CREATE_JOINABLE 0
#define PTHREAD_CREATE_DETACHED 1
#define PTHREAD_CANCELED ((void *)-1)

int pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
int pthread_join(pthread_t, void **);
int pthread_detach(pthread_t);
__attribute__((noreturn)) void pthread_exit(void *);
int pthread_cancel(pthread_t);
pthread_t pthread_self(void);
int pthread_equal(pthread_t, pthread_t);

int pthread_attr_init(pthread_attr_t *);
int pthread_attr_destroy(pthread_attr_t *);
int pthread_attr_setdetachstate(pthread_attr_t *, int);

int pthread_mutex_init(pthread_mutex_t *, const pthread_mutexattr_t *);
int pthread_mutex_destroy(pthread_mutex_t *);
int pthread_mutex_lock(pthread_mutex_t *);
int pthread_mutex_trylock(pthread_mutex_t *);
int pthread_mutex_unlock(pthread_mutex_t *);

int pthread_cond_init(pthread_cond_t *, const pthread_condattr_t *);
int pthread_cond_destroy(pthread_cond_t *);
int pthread_cond_signal(pthread_cond_t *);
int pthread_cond_broadcast(pthread_cond_t *);
int pthread_cond_wait(pthread_cond_t *, pthread_mutex_t *);
int pthread_cond_timedwait(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);

int pthread_once(pthread_once_t *, void (*)(void));

/* No cancellation, so cleanup handlers just run (or not) in place. */
#define pthread_cleanup_push(f, x) do { void (*bx_wasi_cleanup_f_)(void *) = (f); void *bx_wasi_cleanup_x_ = (x);
#define pthread_cleanup_pop(r) if ((r) && bx_wasi_cleanup_f_) bx_wasi_cleanup_f_(bx_wasi_cleanup_x_); } while (0)

#ifdef __cplusplus
}
#endif

#endif /* BX_WASI_PTHREAD_H */
