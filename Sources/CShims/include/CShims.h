// CShims: the C surface harp uses. Swift imports liburing's static inline functions and most
// constants directly; a harp_ wrapper exists only where the importer refuses something
// (function-like macros, constants built from enums, GNU-only declarations).
#ifndef HARP_CSHIMS_H
#define HARP_CSHIMS_H

// System headers come first, without _GNU_SOURCE, so they resolve to the same declarations
// as Swift's Glibc module; liburing.h (which defines _GNU_SOURCE) then finds them included.
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <liburing.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/rand.h>
#include <openssl/pem.h>
#include <snappy-c.h>
#include <openssl/crypto.h>
#include <sqlite3.h>
#include <zlib.h>

// openat2(2) has no glibc wrapper (2.36): the syscall, resolving beneath `dirfd` with no
// symbolic link followed on the way (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) — what P2P
// storage writes a peer's files with. Returns a descriptor or -1 with errno. renameat2(2)
// with RENAME_NOREPLACE is a GNU declaration Glibc's overlay hides.
int harp_openat_beneath(int dirfd, const char *path, int flags, unsigned int mode);
int harp_renameat_noreplace(int olddirfd, const char *oldpath, int newdirfd, const char *newpath);
static const int HARP_O_PATH = 010000000;  // O_PATH, <fcntl.h> under _GNU_SOURCE
static const long HARP_UTIME_OMIT = (1l << 30) - 2l;  // UTIME_OMIT, a macro of <sys/stat.h>

// splice(2), pipe2(2) and F_SETPIPE_SZ are GNU extensions that Glibc's Swift overlay hides.
ssize_t harp_splice(int fd_in, int fd_out, size_t len, unsigned int flags);
int harp_pipe_nonblocking(int fds[2]);
int harp_set_pipe_size(int fd, int size);
static const unsigned int HARP_SPLICE_F_MOVE = 1;      // SPLICE_F_MOVE, <fcntl.h> under _GNU_SOURCE
static const unsigned int HARP_SPLICE_F_NONBLOCK = 2;  // SPLICE_F_NONBLOCK

// Signals are blocked in every thread and read through a signalfd, so that no Swift code runs
// inside a signal handler; sigsetops are macros or variadic-looking in glibc.
int harp_signalfd_for_shutdown(void);

// OpenSSL configures these through macros over SSL_CTX_ctrl/SSL_ctrl, which Swift cannot call.
static const uint64_t HARP_SSL_OP_NO_RENEGOTIATION = SSL_OP_NO_RENEGOTIATION;
static const uint64_t HARP_SSL_OP_CIPHER_SERVER_PREFERENCE = SSL_OP_CIPHER_SERVER_PREFERENCE;
int harp_ssl_ctx_set_versions(SSL_CTX *ctx, int lowest, int highest);
int harp_ssl_set_host_name(SSL *ssl, const char *name);
void harp_ssl_ctx_set_servername_callback(SSL_CTX *ctx, int (*callback)(SSL *, int *, void *), void *arg);
long harp_ssl_session_reused(SSL *ssl);

// TLSStream's ciphertext buffers (tls_buffers.c): `input` holds received bytes OpenSSL has not
// read yet ([input_start, input_end)), `output` the records it wrote not yet sent
// ([0, output_length)); `output` may be NULL while nothing is pending (a write then asks to be
// retried).
typedef struct harp_tls_buffers {
    unsigned char *input;
    size_t input_start, input_end;
    unsigned char *output;
    size_t output_length, output_capacity;
    int eof;
} harp_tls_buffers;
// A BIO reading from and writing to `buffers` (which must outlive it), for both directions:
// SSL_set_bio(ssl, bio, bio) takes its one reference.
BIO *harp_bio_new_buffers(harp_tls_buffers *buffers);

// CPUs this process may run on: its affinity mask (CPU_COUNT is a macro) capped by a cgroup
// CPU quota (v2 cpu.max, v1 cpu.cfs_quota_us), rounded up. At least 1.
int harp_usable_cpus(void);

// pthread_setname_np (a GNU extension): names a thread for top -H and /proc (15 bytes kept).
int harp_set_thread_name(pthread_t thread, const char *name);

#endif
