/* Benchmark loop for `cargo xtask bench`: each of THREADS threads locks and
 * unlocks its own mutex (no contention: the cost measured is the lock
 * operation and its probe hits, not waiting) for SECONDS, then the program
 * prints the mean cost of one lock+unlock pair in nanoseconds.
 *
 *   lockloop mutex|trylock|rwlock|sem|malloc THREADS SECONDS
 *
 * mutex: pthread_mutex_lock/unlock; trylock: pthread_mutex_trylock/unlock;
 * rwlock: pthread_rwlock_rdlock/unlock; sem: sem_trywait/sem_post, the way
 * CPython takes an uncontended threading.Lock; malloc: a mutex pair with a
 * malloc(64) and its free inside (what `--watch-free` adds a probe hit to).
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_THREADS 64
#define BATCH 256 /* pairs between two clock reads */

enum mode { MUTEX, TRYLOCK, RWLOCK, SEM, MALLOC };
static enum mode mode;
static double seconds;

struct worker {
    pthread_t thread;
    pthread_mutex_t mutex;
    pthread_rwlock_t rwlock;
    sem_t sem;
    unsigned long pairs;
    double elapsed_ns;
} __attribute__((aligned(128))); /* one cache line pair each: no false sharing */

static struct worker workers[MAX_THREADS];

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void *work(void *arg)
{
    struct worker *w = arg;
    double start = now_ns(), end = start + seconds * 1e9, t = start;
    unsigned long pairs = 0;

    while (t < end) {
        for (int i = 0; i < BATCH; i++) {
            switch (mode) {
            case MUTEX:
                pthread_mutex_lock(&w->mutex);
                pthread_mutex_unlock(&w->mutex);
                break;
            case TRYLOCK:
                if (pthread_mutex_trylock(&w->mutex) != 0)
                    abort(); /* uncontended: cannot fail */
                pthread_mutex_unlock(&w->mutex);
                break;
            case RWLOCK:
                pthread_rwlock_rdlock(&w->rwlock);
                pthread_rwlock_unlock(&w->rwlock);
                break;
            case SEM:
                if (sem_trywait(&w->sem) != 0)
                    abort();
                sem_post(&w->sem);
                break;
            case MALLOC: {
                pthread_mutex_lock(&w->mutex);
                void *volatile p = malloc(64);
                free(p);
                pthread_mutex_unlock(&w->mutex);
                break;
            }
            }
        }
        pairs += BATCH;
        t = now_ns();
    }
    w->pairs = pairs;
    w->elapsed_ns = t - start;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: lockloop mutex|trylock|rwlock|sem|malloc THREADS SECONDS\n");
        return 2;
    }
    if (strcmp(argv[1], "mutex") == 0)
        mode = MUTEX;
    else if (strcmp(argv[1], "trylock") == 0)
        mode = TRYLOCK;
    else if (strcmp(argv[1], "rwlock") == 0)
        mode = RWLOCK;
    else if (strcmp(argv[1], "sem") == 0)
        mode = SEM;
    else if (strcmp(argv[1], "malloc") == 0)
        mode = MALLOC;
    else {
        fprintf(stderr, "lockloop: unknown mode %s\n", argv[1]);
        return 2;
    }
    int threads = atoi(argv[2]);
    seconds = atof(argv[3]);
    if (threads < 1 || threads > MAX_THREADS || seconds <= 0) {
        fprintf(stderr, "lockloop: bad THREADS or SECONDS\n");
        return 2;
    }
    alarm((unsigned)seconds + 60); /* never outlive the benchmark */

    for (int i = 0; i < threads; i++) {
        pthread_mutex_init(&workers[i].mutex, NULL);
        pthread_rwlock_init(&workers[i].rwlock, NULL);
        sem_init(&workers[i].sem, 0, 1);
        if (pthread_create(&workers[i].thread, NULL, work, &workers[i]) != 0)
            return 1;
    }
    double ns = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(workers[i].thread, NULL);
        ns += workers[i].elapsed_ns / workers[i].pairs;
    }
    printf("%.2f\n", ns / threads);
    return 0;
}
