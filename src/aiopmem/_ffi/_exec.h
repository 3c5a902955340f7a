/* The executor: worker threads that run jobs without ever taking the GIL.

   Interface (trio's start_thread_soon(fn, deliver) is the model): a job is a C struct with two
   functions. `run` makes the job's syscalls; `deliver` hands the finished job on (to the event
   loop that waits for it, see _core_jobs.h); both are called in a worker, one right after
   the other, without the GIL. The executor knows nothing of Python or of event loops.

   Scheduling. Jobs run in submission order. One worker normally drains the queue (the hop stays
   cheap under load: no thread is woken while one is still running), but a job never waits
   behind a slow one for long: while jobs are queued and every worker runs one, a spare worker
   watches the queue, and takes the first job once it has waited EXEC_STALL seconds (the
   running workers are stuck, not merely busy); then another spare takes its place. Slow jobs
   (a 0.4 s msync) therefore overlap, each starting at most EXEC_STALL late. Idle workers
   beyond the first exit after `idle_exit` seconds; at most `max_workers` exist (when the bound
   is lowered, the surplus retires as each one next looks at the queue, never with a job).

   The watch. A worker back from a job with nothing queued watches the queue for up to
   ex.spin seconds before it sleeps (it counts as in transit meanwhile: a submission wakes
   nobody), so a task that awaits one job after another is served without a wake-up. A watch
   during which the worker got clearly less CPU than the time it watched (the CPU was wanted
   elsewhere) makes the next ones rarer (exponential backoff, at most EXEC_SPIN_BACKOFF).

   Rescue. A job's deliver may ask for a look later (exec_delivered): the first idle worker
   whose wait reaches that time calls the rescue hook (set by the user of the executor), which
   returns how long until it wants another look (0: none). The jobs' user uses it to commit the
   jobs of an event loop that stopped draining (see _core_jobs.h).

   Guarantees: every queued job is run exactly once and delivered exactly once; the queue and
   the counters are guarded by ex.mu; a submission that cannot be handed to any worker (no
   thread could be started and none exists) is refused, not queued. After fork() the child
   starts with an empty executor (it has none of the parent's threads). */
#ifndef AIOPMEM_EXEC_H
#define AIOPMEM_EXEC_H

#include <errno.h>
#include <stdlib.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>

typedef struct ExecJob ExecJob;
struct ExecJob {
    void (*run)(ExecJob *);
    int (*deliver)(ExecJob *); /* EXEC_HELD: its signal is held back until the batch ends */
    ExecJob *next; /* in the queue, then in the list of running jobs */
    double queued_at;
};

#define EXEC_STALL 0.002
#define EXEC_SPIN_YIELD 10e-6
#define EXEC_SPIN_BACKOFF 256
#define EXEC_SPIN_DEFAULT_US 100

static struct {
    pthread_mutex_t mu;
    pthread_cond_t idle_cv, spare_cv;
    ExecJob *head, *tail;
    ExecJob *running_jobs; /* for fork(): run again in the child (every job is idempotent) */
    long queued;
    int threads, idle, running, spare, waking;
    int wake_wanted; /* a deferred submission waits for exec_flush() */
    int max_workers;
    double idle_exit;
    double spin;  /* seconds a worker back from a job watches the queue before sleeping */
    int spinning; /* a worker does so now (it counts as in transit: nobody wakes one) */
    int spin_skip, spin_backoff; /* after a contended watch: how many to skip */
    double rescue_at; /* when an idle worker calls the rescue hook (0: not wanted) */
    double (*rescue)(void);
    /* Batches: a deliver may hold its signal back while more jobs are queued (held_pending);
       the release hook sends what is held, called by a worker that takes the last queued job
       or is about to wait. So the jobs submitted together reach their loop together. */
    int held_pending;
    void (*release)(void);
    unsigned long long started, retired, ran; /* counters, for tests and benchmarks */
    unsigned long long spins, spin_hits, spin_contended;
} ex;

static double
exec_clock(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double
exec_now(void)
{
    return exec_clock(CLOCK_MONOTONIC);
}

static inline void
exec_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void
exec_deadline(struct timespec *ts, double at)
{
    ts->tv_sec = (time_t)at;
    ts->tv_nsec = (long)((at - (double)ts->tv_sec) * 1e9);
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

static void
exec_init_locks(void)
{
    pthread_condattr_t attr;
    pthread_mutexattr_t mattr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    /* Held for a few instructions at a time by the loop's thread and the workers: spinning a
       little beats a futex round trip. */
    pthread_mutexattr_init(&mattr);
    pthread_mutexattr_settype(&mattr, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&ex.mu, &mattr);
    pthread_mutexattr_destroy(&mattr);
    pthread_cond_init(&ex.idle_cv, &attr);
    pthread_cond_init(&ex.spare_cv, &attr);
    pthread_condattr_destroy(&attr);
}

static void *exec_worker(void *arg);

/* Start one more worker (ex.mu held): 0, or the errno of pthread_create. Workers block every
   signal: signals are for the threads that run Python. */
static int
exec_start(void)
{
    if (ex.threads >= ex.max_workers)
        return EAGAIN;
    pthread_attr_t attr;
    pthread_t t;
    sigset_t all, old;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&t, &attr, exec_worker, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (e == 0) {
        ex.threads++;
        ex.started++;
    }
    return e;
}

/* One more worker looks at the queue (ex.mu held): an idle one is woken, or one is started.
   0, or an errno when neither is possible. */
static int
exec_wake_or_start(void)
{
    if (ex.idle) {
        pthread_cond_signal(&ex.idle_cv);
        ex.waking = 1;
        return 0;
    }
    return exec_start();
}

/* Make sure a worker will look at the queue (ex.mu held): if one is about to (woken, or in
   transit), nothing; if one runs a job, it takes the next when done, and a spare is woken or
   started to watch in case it is slow; else a spare or an idle worker is woken, or a worker
   started. 0, or an errno when no worker exists and none can be started. */
static int
exec_ensure_looker(void)
{
    int in_transit = ex.threads - ex.running - ex.idle - ex.spare;
    if (ex.waking || in_transit > 0)
        return 0;
    if (ex.running) {
        if (!ex.spare)
            (void)exec_wake_or_start(); /* best effort: the running one comes back */
        return 0;
    }
    if (ex.spare) {
        pthread_cond_signal(&ex.spare_cv);
        ex.waking = 1;
        return 0;
    }
    return exec_wake_or_start();
}

/* Queue `j`: 0, or an errno (not queued: no worker exists and none can be started).

   Deferred wake-up (`defer`): a worker that would have to be woken for the job is not woken
   now: *flush is set, and the caller calls exec_flush() soon, once for all the jobs it submits
   meanwhile (an event loop: once per iteration; a wake-up costs the waker tens of
   microseconds on a VM). If the flush never comes (the loop stopped), an idle worker still looks
   at the queue by EXEC_BACKSTOP: a job is never stranded. */
#define EXEC_BACKSTOP 0.05

static int
exec_submit(ExecJob *j, int defer, int *flush)
{
    j->next = NULL;
    j->queued_at = exec_now();
    *flush = 0;
    pthread_mutex_lock(&ex.mu);
    int e = 0;
    if (defer && ex.threads > 0) {
        int in_transit = ex.threads - ex.running - ex.idle - ex.spare;
        if (!(ex.waking || in_transit > 0 || (ex.running && ex.spare))) {
            ex.wake_wanted = 1;
            *flush = 1;
            double at = j->queued_at + EXEC_BACKSTOP;
            if (ex.rescue_at == 0 || at < ex.rescue_at) {
                if (ex.rescue_at == 0 && ex.idle)
                    pthread_cond_signal(&ex.idle_cv);
                ex.rescue_at = at;
            }
        }
    }
    else
        e = exec_ensure_looker();
    if (e == 0) {
        if (ex.tail)
            ex.tail->next = j;
        else
            ex.head = j;
        ex.tail = j;
        ex.queued++;
    }
    pthread_mutex_unlock(&ex.mu);
    return e;
}

/* The deferred wake-up of the jobs submitted since the last flush. */
static void
exec_flush(void)
{
    pthread_mutex_lock(&ex.mu);
    if (ex.wake_wanted) {
        ex.wake_wanted = 0;
        if (ex.head)
            (void)exec_ensure_looker();
    }
    pthread_mutex_unlock(&ex.mu);
}

/* Whether more jobs are queued (read without the lock: a hint for batching). */
static int
exec_more_queued(void)
{
    return __atomic_load_n(&ex.head, __ATOMIC_RELAXED) != NULL;
}

#define EXEC_HELD 1
/* A finished job asks for a call of the rescue hook this long after its delivery. */
#define EXEC_RESCUE_AFTER 0.05

/* After a deliver (ex.mu held): ask for a call of the rescue hook EXEC_RESCUE_AFTER later (or
   sooner, if asked for already), and note a held signal. The first request of a quiet spell
   wakes an idle worker, so that one waits for that time: a worker's own idle deadline may be
   far off. */
static void
exec_delivered(int flags)
{
    double at = exec_now() + EXEC_RESCUE_AFTER;
    if (flags & EXEC_HELD)
        ex.held_pending = 1;
    if (ex.rescue_at == 0 || at < ex.rescue_at) {
        if (ex.rescue_at == 0 && ex.idle)
            pthread_cond_signal(&ex.idle_cv);
        ex.rescue_at = at;
    }
}

/* Call the rescue hook if it is due (ex.mu held, released meanwhile: the worker is then in
   transit, so nobody is woken for a submission). 1 if it ran. */
static int
exec_rescue_if_due(void)
{
    if (!(ex.rescue_at > 0 && ex.rescue != NULL && exec_now() >= ex.rescue_at))
        return 0;
    ex.rescue_at = 0;
    pthread_mutex_unlock(&ex.mu);
    double again = ex.rescue();
    pthread_mutex_lock(&ex.mu);
    if (again > 0) {
        double at = exec_now() + again;
        if (ex.rescue_at == 0 || at < ex.rescue_at)
            ex.rescue_at = at;
    }
    return 1;
}

/* Send the held signals if any (ex.mu held, released meanwhile). 1 if it did. */
static int
exec_release_if_held(void)
{
    if (!ex.held_pending || ex.release == NULL)
        return 0;
    ex.held_pending = 0;
    pthread_mutex_unlock(&ex.mu);
    ex.release();
    pthread_mutex_lock(&ex.mu);
    return 1;
}

/* A timed wait on `cv` until `until` (ex.mu held), counted in `*count`. */
static int
exec_wait(pthread_cond_t *cv, int *count, double until)
{
    struct timespec ts;
    if (ex.rescue != NULL && ex.rescue_at > 0 && ex.rescue_at < until)
        until = ex.rescue_at;
    exec_deadline(&ts, until);
    (*count)++;
    int r = pthread_cond_timedwait(cv, &ex.mu, &ts);
    (*count)--;
    ex.waking = 0;
    return r;
}

/* Busy-wait up to `seconds` until ready(arg), yielding the CPU every EXEC_SPIN_YIELD (another
   thread, the event loop's or a worker, may be waiting for it). 1 if this thread got clearly
   less CPU than the time it watched: others wanted the CPU. */
static int
exec_watch(int (*ready)(void *), void *arg, double seconds)
{
    double now = exec_now(), start = now, cpu = exec_clock(CLOCK_THREAD_CPUTIME_ID);
    double until = now + seconds, yield_at = now + EXEC_SPIN_YIELD;
    while (!ready(arg) && (now = exec_now()) < until) {
        if (now >= yield_at) {
            sched_yield();
            yield_at = now + EXEC_SPIN_YIELD;
        }
        else
            exec_relax();
    }
    return exec_clock(CLOCK_THREAD_CPUTIME_ID) - cpu < 0.8 * (exec_now() - start);
}

/* After a watch: `ok` resets the backoff; otherwise the next ones are skipped, 1, 2, 4...
   up to `most` at a time. */
static void
exec_backoff(int ok, int *backoff, int *skip, int most)
{
    if (ok) {
        *backoff = *skip = 0;
        return;
    }
    *backoff = *backoff ? 2 * *backoff : 1;
    if (*backoff > most)
        *backoff = most;
    *skip = *backoff;
}

static int
exec_queue_ready(void *unused)
{
    (void)unused;
    return __atomic_load_n(&ex.head, __ATOMIC_RELAXED) != NULL;
}

/* Watch the queue for up to ex.spin seconds (ex.mu not held): exec_watch's verdict. */
static int
exec_spin(void)
{
    return exec_watch(exec_queue_ready, NULL, ex.spin);
}

/* Wait for a job this worker should run (ex.mu held); NULL: retire. */
static ExecJob *
exec_take(void)
{
    int arriving = 1;      /* just started, or back from a job: first in line for the queue */
    int spun = 0;          /* watched the queue for ex.spin already */
    double idle_since = 0; /* when this worker found nothing to do */
    for (;;) {
        if (ex.threads > ex.max_workers) { /* the bound was lowered: the surplus retires */
            if (exec_release_if_held())
                continue;
            ex.threads--;
            ex.retired++;
            /* It may have been the one woken for a job or a rescue: pass that on. */
            if (ex.head)
                (void)exec_ensure_looker();
            else if (ex.rescue_at > 0 && ex.idle)
                pthread_cond_signal(&ex.idle_cv);
            return NULL;
        }
        if (ex.head) {
            double now = exec_now();
            int stuck = !ex.running || now - ex.head->queued_at >= EXEC_STALL;
            int in_transit = ex.threads - ex.running - ex.idle - ex.spare;
            /* Back from waiting, leave the job to a worker in transit: it is about to take it. */
            if (arriving || (stuck && in_transit <= 1))
                break;
            if (exec_release_if_held())
                continue;
            exec_wait(&ex.spare_cv, &ex.spare,
                      stuck ? now + EXEC_STALL : ex.head->queued_at + EXEC_STALL);
            arriving = 0;
            exec_rescue_if_due();
        }
        else if (exec_release_if_held())
            continue;
        else if (ex.running && !ex.spare) {
            /* Busy: stay the spare (one timed wake-up per EXEC_STALL while others run, so
               that a submission behind a running job never has to wake anyone). */
            exec_wait(&ex.spare_cv, &ex.spare, exec_now() + EXEC_STALL);
            arriving = 0;
            idle_since = 0;
            exec_rescue_if_due();
        }
        else if (arriving && !spun && ex.spin > 0 && !ex.spinning && ex.spin_skip-- <= 0) {
            /* Back from a job (or just started), nothing queued: watch before sleeping. */
            spun = 1;
            ex.spinning = 1;
            pthread_mutex_unlock(&ex.mu);
            int contended = exec_spin();
            pthread_mutex_lock(&ex.mu);
            ex.spinning = 0;
            ex.spins++;
            ex.spin_hits += ex.head != NULL;
            ex.spin_contended += contended;
            /* Contended counts even when a job came: on a shared CPU the job came because the
               watch yielded to the loop's thread, which had waited for this CPU. Measured
               with a CPU hog, a task awaiting op after op lost 12-22% of its rate when only
               misses backed off, 0-13% when contention does. */
            exec_backoff(!contended, &ex.spin_backoff, &ex.spin_skip, EXEC_SPIN_BACKOFF);
        }
        else {
            double now = exec_now();
            if (idle_since == 0)
                idle_since = now;
            exec_wait(&ex.idle_cv, &ex.idle, idle_since + ex.idle_exit);
            arriving = 0;
            if (exec_rescue_if_due())
                continue;
            if (!ex.head && ex.threads > 1 && ex.rescue_at == 0 &&
                exec_now() - idle_since >= ex.idle_exit) {
                ex.threads--;
                ex.retired++;
                return NULL;
            }
        }
    }
    ExecJob *j = ex.head;
    ex.head = j->next;
    if (!ex.head)
        ex.tail = NULL;
    ex.queued--;
    ex.running++;
    j->next = ex.running_jobs;
    ex.running_jobs = j;
    return j;
}

static void
exec_done(ExecJob *j) /* ex.mu held */
{
    ExecJob **p = &ex.running_jobs;
    while (*p != j)
        p = &(*p)->next;
    *p = j->next;
    j->next = NULL;
    ex.running--;
    ex.ran++;
}

static void *
exec_worker(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&ex.mu);
    for (;;) {
        ExecJob *j = exec_take();
        if (j == NULL)
            break;
        /* Keep a spare watching whatever is still queued behind this job. */
        if (ex.head && !ex.spare && !ex.waking && ex.threads == ex.running + ex.idle)
            (void)exec_wake_or_start(); /* best effort: this worker comes back to the queue */
        /* The last job of a batch: what the batch's earlier jobs held back goes now. */
        int release = !ex.head && ex.held_pending && ex.release != NULL;
        if (release)
            ex.held_pending = 0;
        pthread_mutex_unlock(&ex.mu);
        if (release)
            ex.release();
        j->run(j);
        pthread_mutex_lock(&ex.mu);
        exec_done(j);
        pthread_mutex_unlock(&ex.mu);
        /* Only now: the task it resumes may submit its next job at once, and this worker must
           already count as in transit, or another would be woken for it. */
        int flags = j->deliver(j);
        pthread_mutex_lock(&ex.mu);
        exec_delivered(flags);
    }
    pthread_mutex_unlock(&ex.mu);
    return NULL;
}

/* fork(): the forking thread holds ex.mu across the fork (prepare / parent), so the child's
   copy of the queue is whole. The child has none of the workers: jobs that were running are
   queued again, first (each job's syscalls can be made twice: a mmap MAP_FIXED or placeholder
   overlay of the same range, an msync), and exec_after_fork() starts a worker for them. */
static void
exec_fork_prepare(void)
{
    pthread_mutex_lock(&ex.mu);
}

static void
exec_fork_parent(void)
{
    pthread_mutex_unlock(&ex.mu);
}

static void
exec_fork_child(void)
{
    exec_init_locks();
    ExecJob *again = ex.running_jobs, *last = NULL;
    long n = 0;
    for (ExecJob *j = again; j; j = j->next) {
        last = j;
        n++;
    }
    if (last != NULL) {
        last->next = ex.head;
        if (ex.head == NULL)
            ex.tail = last;
        ex.head = again;
        ex.queued += n;
    }
    ex.running_jobs = NULL;
    ex.threads = ex.idle = ex.running = ex.spare = ex.waking = ex.spinning = 0;
}

/* In the child, once Python runs again: a worker for the jobs queued at the fork, and a look
   by the rescue for finished ones `pending` says are listed. 0, or the errno of the start. */
static int
exec_after_fork(int pending)
{
    int e = 0;
    pthread_mutex_lock(&ex.mu);
    if (pending && (ex.rescue_at == 0 || ex.rescue_at > exec_now()))
        ex.rescue_at = exec_now();
    if ((ex.head || pending) && ex.threads == 0)
        e = exec_start();
    pthread_mutex_unlock(&ex.mu);
    return e;
}

static void
exec_init(void)
{
    exec_init_locks();
    ex.max_workers = 64;
    ex.idle_exit = 10.0;
    /* AIOPMEM_SPIN_US: the watch after a job, in microseconds (0: none). */
    const char *spin = getenv("AIOPMEM_SPIN_US");
    double us = spin && *spin ? atof(spin) : EXEC_SPIN_DEFAULT_US;
    ex.spin = us > 0 ? (us < 10000 ? us : 10000) * 1e-6 : 0; /* not a number: atof gives 0 */
}

#endif
