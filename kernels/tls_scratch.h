/* tls_scratch.h — kernel scratch kept per thread (a thread-local pointer, allocated on first use and
 * reused by every later call on that thread) and freed when its thread ends. Threads that end before
 * the process does are a server's workers (serve/http.c): without the destructor each would leak its
 * scratch. MK_TLS_SCRATCH(name) defines name_own(p), to call after every (re)allocation. */
#ifndef MTOK_TLS_SCRATCH_H
#define MTOK_TLS_SCRATCH_H

#include <pthread.h>
#include <stdlib.h>

#define MK_TLS_SCRATCH(name)                                                                       \
    static pthread_key_t name##_key;                                                               \
    static pthread_once_t name##_once = PTHREAD_ONCE_INIT;                                         \
    static void name##_key_make(void) { pthread_key_create(&name##_key, free); }                  \
    static void name##_own(void *p) {                                                              \
        pthread_once(&name##_once, name##_key_make);                                               \
        pthread_setspecific(name##_key, p);                                                        \
    }

#endif
