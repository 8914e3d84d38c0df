// blast: the load generator and sink for bench/relay.sh, in C so that the measuring end is
// never the bottleneck. Not part of harp.
//   blast sink PORT            accept one connection per run, read to EOF, print "<bytes> <seconds>"
//   blast send HOST PORT BYTES connect, send BYTES from a 1 MiB buffer, shut down, wait for EOF
//   blast source PORT BYTES    accept one connection per run, send BYTES, shut down, wait for EOF
//   blast recv HOST PORT       connect, read to EOF, print "<bytes> <seconds>"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char buffer[1 << 20];

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "sink") == 0) {
        int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 16)) { perror("sink"); return 1; }
        for (;;) {
            int fd = accept(listener, NULL, NULL);
            if (fd < 0) continue;
            double start = now();
            long long total = 0;
            ssize_t n;
            while ((n = read(fd, buffer, sizeof buffer)) > 0) total += n;
            double elapsed = now() - start;
            close(fd);
            printf("%lld %.6f\n", total, elapsed);
            fflush(stdout);
        }
    }
    if (argc >= 5 && strcmp(argv[1], "send") == 0) {
        long long want = atoll(argv[4]), sent = 0;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
        inet_pton(AF_INET, argv[2], &addr.sin_addr);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) { perror("send"); return 1; }
        memset(buffer, 'h', sizeof buffer);
        double start = now();
        while (sent < want) {
            size_t chunk = want - sent < (long long)sizeof buffer ? (size_t)(want - sent) : sizeof buffer;
            ssize_t n = write(fd, buffer, chunk);
            if (n <= 0) { perror("write"); return 1; }
            sent += n;
        }
        shutdown(fd, SHUT_WR);
        while (read(fd, buffer, sizeof buffer) > 0) {}
        printf("%lld %.6f\n", sent, now() - start);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "source") == 0) {
        long long want = atoll(argv[3]);
        int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 16)) { perror("source"); return 1; }
        memset(buffer, 'h', sizeof buffer);
        for (;;) {
            int fd = accept(listener, NULL, NULL);
            if (fd < 0) continue;
            long long sent = 0;
            while (sent < want) {
                size_t chunk = want - sent < (long long)sizeof buffer ? (size_t)(want - sent) : sizeof buffer;
                ssize_t n = write(fd, buffer, chunk);
                if (n <= 0) break;
                sent += n;
            }
            shutdown(fd, SHUT_WR);
            while (read(fd, buffer, sizeof buffer) > 0) {}
            close(fd);
        }
    }
    if (argc >= 4 && strcmp(argv[1], "recv") == 0) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[3])) };
        inet_pton(AF_INET, argv[2], &addr.sin_addr);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) { perror("recv"); return 1; }
        double start = now();
        long long total = 0;
        ssize_t n;
        while ((n = read(fd, buffer, sizeof buffer)) > 0) total += n;
        printf("%lld %.6f\n", total, now() - start);
        return 0;
    }
    fprintf(stderr, "usage: blast sink PORT | send HOST PORT BYTES | source PORT BYTES | recv HOST PORT\n");
    return 2;
}
