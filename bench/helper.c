/* bench/helper.c: the small programs bench.py runs under each init. Compiled on the fly by
 * bench.sh (cc -O2); not part of comfy-init.
 *
 *   helper child FIFO           the supervised child: SIGUSR1 handler that writes the
 *                               CLOCK_MONOTONIC arrival time (8 bytes) to FIFO; writes 8 zero
 *                               bytes once ready; then sleeps in pause(). SIGTERM/SIGINT keep
 *                               their default action (the child dies at once).
 *   helper send ROUNDS PER_ROUND SEED PID FIFO...  the signal row, interleaved: each round
 *                               sends PER_ROUND SIGUSR1 to each PID (in a new random order),
 *                               one at a time, each time waiting for that child's timestamp on
 *                               its FIFO; prints "INDEX NS" per signal.
 *   helper reap N               run as the init's direct child: an intermediate forks N children
 *                               that exit at once, waits until they are zombies, exits; they are
 *                               orphaned to the init. Prints the ms until /proc (the namespace's)
 *                               is back to its process count from before: every zombie reaped.
 *   helper spawn ROUNDS SEED CMD...  the spawn row, interleaved: each round runs every CMD (a
 *                               command line split on spaces) once, in a new random order, with
 *                               posix_spawnp + waitpid (its output to /dev/null); prints "INDEX NS"
 *                               per run. A command that exits non-zero stops it (exit 1).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int ack_fd = -1;

static void on_usr1(int sig) {
    (void)sig;
    int64_t t = now_ns();
    int saved = errno;
    if (write(ack_fd, &t, sizeof t) < 0) {
        /* nothing to do in a handler */
    }
    errno = saved;
}

static int child(const char *fifo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* the reader may go away while we idle */
    ack_fd = open(fifo, O_WRONLY);
    if (ack_fd < 0) {
        perror("helper child: open fifo");
        return 1;
    }
    int64_t zero = 0;
    if (write(ack_fd, &zero, sizeof zero) != sizeof zero) {
        perror("helper child: ready");
        return 1;
    }
    for (;;) pause();
}

static int read_full(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "helper send: no acknowledgement within 10 s (signal lost?)\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(3);
}

/* Interleaved: every round sends PER_ROUND signals to each target in a new random order, so
 * that the machine's drift reaches every init alike. */
static uint64_t rng_state;
static uint64_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* order[] = 0..n-1 in a random order (Fisher-Yates). */
static void shuffled(int *order, int n) {
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(next_random() % (uint64_t)(i + 1));
        int t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

static int send(long rounds, long per_round, uint64_t seed, int n, char **targets) {
    if (n < 1 || n > 16) return 2;
    pid_t pids[16];
    int fds[16];
    signal(SIGALRM, on_alarm);
    for (int t = 0; t < n; t++) {
        pids[t] = (pid_t)atoi(targets[2 * t]);
        alarm(10);
        fds[t] = open(targets[2 * t + 1], O_RDONLY);
        int64_t ready;
        if (fds[t] < 0 || read_full(fds[t], &ready, sizeof ready) != 0) {
            fprintf(stderr, "helper send: target %d never got ready\n", t);
            return 1;
        }
    }
    rng_state = seed ? seed : 88172645463325252ull;
    int order[16];
    for (long r = 0; r < rounds; r++) {
        shuffled(order, n);
        for (int i = 0; i < n; i++) {
            int t = order[i];
            for (long k = 0; k < per_round; k++) {
                alarm(10);
                int64_t t0 = now_ns();
                if (kill(pids[t], SIGUSR1) != 0) {
                    perror("helper send: kill");
                    return 1;
                }
                int64_t t1;
                if (read_full(fds[t], &t1, sizeof t1) != 0) {
                    fprintf(stderr, "helper send: target %d went away\n", t);
                    return 1;
                }
                printf("%d %lld\n", t, (long long)(t1 - t0));
            }
        }
    }
    alarm(0);
    return 0;
}

/* Processes in this (PID namespace's) /proc, zombies included. */
static int count_procs(void) {
    DIR *d = opendir("/proc");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9') n++;
    }
    closedir(d);
    return n;
}

static int reap(long n) {
    int base = count_procs();
    pid_t mid = fork();
    if (mid < 0) {
        perror("helper reap: fork");
        return 1;
    }
    if (mid == 0) {
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) _exit(0);
            if (p < 0) {
                if (errno == EAGAIN) {
                    usleep(1000);
                    i--;
                    continue;
                }
                perror("helper reap: fork orphan");
                _exit(1);
            }
        }
        usleep(300 * 1000); /* every orphan has exited by now: all zombies */
        _exit(0);
    }
    int status;
    int64_t fork_start = now_ns();
    while (waitpid(mid, &status, 0) < 0 && errno == EINTR) {
    }
    /* The intermediate is gone: its zombies now belong to the init. */
    int64_t t0 = now_ns();
    int peak = count_procs();
    int left = peak;
    while (left > base) {
        if (now_ns() - t0 > 60LL * 1000000000LL) {
            printf("timeout left=%d\n", left - base);
            return 2;
        }
        usleep(1000);
        left = count_procs();
    }
    int64_t t1 = now_ns();
    printf("reap_ms=%.3f orphans_seen=%d fork_ms=%.1f\n", (double)(t1 - t0) / 1e6, peak - base,
           (double)(t0 - fork_start) / 1e6);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}


extern char **environ;

static int spawn_rounds(long rounds, uint64_t seed, int n, char **cmds) {
    char **argvs[64];
    if (n < 1 || n > 64) return 2;
    for (int i = 0; i < n; i++) {
        argvs[i] = calloc(64, sizeof(char *));
        int k = 0;
        for (char *tok = strtok(strdup(cmds[i]), " "); tok && k < 63; tok = strtok(NULL, " ")) argvs[i][k++] = tok;
    }
    rng_state = seed ? seed : 88172645463325252ull;
    /* The inits' own output (tini's warning, comfy-init's log) goes to /dev/null, as with hyperfine. */
    posix_spawn_file_actions_t quiet;
    posix_spawn_file_actions_init(&quiet);
    posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&quiet, 2, "/dev/null", O_WRONLY, 0);
    int order[64];
    for (long r = 0; r < rounds; r++) {
        shuffled(order, n);
        for (int i = 0; i < n; i++) {
            int c = order[i];
            int status;
            pid_t pid;
            int64_t t0 = now_ns();
            if (posix_spawnp(&pid, argvs[c][0], &quiet, NULL, argvs[c], environ) != 0) return 1;
            if (waitpid(pid, &status, 0) != pid) return 1;
            int64_t t1 = now_ns();
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "'%s' did not exit 0 (status %d)\n", cmds[c], status);
                return 1;
            }
            printf("%d %lld\n", c, (long long)(t1 - t0));
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "spawn") == 0)
        return spawn_rounds(atol(argv[2]), strtoull(argv[3], NULL, 10), argc - 4, argv + 4);
    if (argc == 3 && strcmp(argv[1], "child") == 0) return child(argv[2]);
    if (argc >= 7 && argc % 2 == 1 && strcmp(argv[1], "send") == 0)
        return send(atol(argv[2]), atol(argv[3]), strtoull(argv[4], NULL, 10), (argc - 5) / 2, argv + 5);
    if (argc == 3 && strcmp(argv[1], "reap") == 0) return reap(atol(argv[2]));
    fprintf(stderr, "usage: helper child FIFO | send ROUNDS PER_ROUND SEED PID FIFO... | reap N | spawn ROUNDS SEED CMD...\n");
    return 2;
}
