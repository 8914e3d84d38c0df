// malloccount.so: LD_PRELOAD shim that counts malloc/calloc/realloc/posix_memalign calls and
// writes the running total to stderr on SIGUSR2. Used by bench/allocs.sh. Not part of harp.
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_long calls;

void *malloc(size_t n) { atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed); return __libc_realloc(p, n); }
int posix_memalign(void **out, size_t align, size_t n) {
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);
    *out = __libc_memalign(align, n);
    return *out ? 0 : 12;
}

static void report(int sig) {
    (void)sig;
    char line[64];
    int len = snprintf(line, sizeof line, "mallocs=%ld\n", atomic_load(&calls));
    write(2, line, len);
}

__attribute__((constructor)) static void install(void) { signal(SIGUSR2, report); }
