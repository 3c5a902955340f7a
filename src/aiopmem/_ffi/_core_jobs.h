/* _core_jobs.h: Jobs of the async API (OpObj) and the ports through which each event loop
 * collects them. Part of _core.c (included once, in order: one translation unit, every function
 * static).
 */

/* -- jobs of the async API ----------------------------------------------------------------- */

/* An async map, unmap or persist: begun on the caller's thread (the event loop's), its
   syscalls run by the executor (_exec.h) without the GIL, committed on the event loop when its
   port (below) drains. Begin, submission and commit are each one C call, so no interrupt can
   come between a claim and the job that stands for it; a job is never abandoned: its commit
   runs whether or not its caller still waits. */

enum { OP_MAP = 0, OP_UNMAP = 1, OP_MEM = 2, OP_OPEN = 3, OP_RESERVE = 4, OP_CLOSE = 5, OP_EXTENT = 6 };

/* The open of a path for map_file, with the descriptor's check (fcntl + fstat): the first of
   the two jobs of a map of a path (the second, the map, needs the file's size for its claim). */
typedef struct {
    PyObject *path; /* bytes, a strong reference (read without the GIL: immutable) */
    int flags, fd, err;
    int64_t check; /* ap_fdcheck's result: the size, or a negative code */
    uint64_t dev;
} OpenJob;

/* Without the GIL: open(2) with O_CLOEXEC, then the check (both injectable). */
static void
open_syscalls(OpenJob *j)
{
    j->fd = -1;
    j->err = 0;
    for (;;) {
        int e = inject_check(SC_OPEN);
        if (e == EINTR)
            continue;
        if (e) {
            j->err = e;
            return;
        }
        j->fd = open(PyBytes_AS_STRING(j->path), j->flags | O_CLOEXEC);
        if (j->fd >= 0)
            break;
        if (errno != EINTR) {
            j->err = errno;
            return;
        }
    }
    int e;
    while ((e = inject_check(SC_FSTAT)) == EINTR)
        ;
    if (e)
        j->check = -(int64_t)e;
    else
        while ((j->check = ap_fdcheck_dev(j->fd, &j->dev)) == -EINTR)
            ;
}

typedef struct PortObj PortObj;

typedef struct OpObj {
    PyObject_HEAD
    ExecJob job;
    int op;
    char delivered; /* committed and handed to its waiter (GIL) */
    char committed; /* by the drain, or by the rescue (GIL) */
    double finished_at; /* when the worker listed it (under the port's mutex) */
    Core *core;
    MapObj *m;
    PortObj *port;
    PyObject *waiter; /* the task's future or task; for a job awaited itself: its loop
                         (asyncio) or its task (trio) */
    PyObject *result; /* after the commit: the mapping, or an int code */
    /* A job awaited itself (its port's `how` is "job"): the one done callback (the awaiting
       task's wake-up), its context, and asyncio's _asyncio_future_blocking flag. */
    PyObject *callback, *cb_context;
    PyObject *task; /* begun by aio_begin: the (asyncio or trio) task it was begun for */
    PyObject *cancel_msg; /* cancel()'s message, for the CancelledError result() raises */
    char blocking;
    char cancel_pending; /* cancel() woke the task: its result() raises CancelledError once */
    char must_yield; /* delivered by the caller's wait (op_wait): its await yields once */
    int waited;      /* WAIT_*: the caller's thread waits for it (op_wait), under the port's mutex */
    struct OpObj *next_done;
    union {
        MapJob map;
        UnmapJob unmap;
        MemJob mem;
        OpenJob open;
        ReserveJob reserve;
        CloseJob close;
        ExtentJob extent;
    } u;
} OpObj;

/* Where the finished jobs of one event loop wait for it: an eventfd the loop watches, written
   only when the list goes from empty to non-empty (one wake-up per batch), and the list. */
struct PortObj {
    PyObject_HEAD
    PyObject *weakreflist;
    struct PortObj *prev_port, *next_port; /* every port, for the rescue (under ports_mu) */
    long inflight; /* jobs started and not drained yet (GIL) */
    int registered; /* in all_ports */
    int flush_scheduled; /* schedule(flush) was called and flush() has not run yet */
    PyObject *schedule;  /* the loop's call_soon (None: wake workers at once) */
    int efd;
    int signaled; /* the eventfd was written since the last drain */
    int held;     /* jobs are listed, their signal held back until their batch ends */
    long listed;  /* jobs in the list (under mu) */
    int self_await; /* each job is awaited itself (op_iternext): SELF_ASYNCIO (how "job") or
                       SELF_TRIO (how ("trio", reschedule, wait, yield)); 0: Python-pool style */
    long last_batch; /* jobs the last drain delivered (GIL): more than one, several tasks wait */
    pthread_mutex_t mu;
    OpObj *head, *tail;
    PyObject *how;
};

enum { SELF_ASYNCIO = 1, SELF_TRIO = 2 };

static PyTypeObject OpType;
static PyTypeObject PortType;
static void op_commit(struct OpObj *o);
static PyObject *str_flush;
static int wake_waiter(PyObject *waiter, PyObject *how, PyObject *job);
static int check_how(PyObject *how);
static int trio_reschedule(PyObject *task);

#define OP_OF(j) ((OpObj *)((char *)(j) - offsetof(OpObj, job)))

/* The caller's wait (op_wait): 0 none; WAITED: the caller's thread watches the job; FINISHED:
   the worker found it watched, and left it to the caller (not listed, no signal). */
enum { WAIT_NONE = 0, WAIT_WATCHED = 1, WAIT_FINISHED = 2 };

/* How long the caller's thread may wait for a short job (a map, an unmap, an open) that a
   watching worker took at once, before it parks the task as usual (see op_wait). */
#define WAIT_DEFAULT_US 50
#define WAIT_BACKOFF 256
static struct {
    double wait;          /* seconds (0: never) */
    int skip, backoff;    /* after a wait that missed or was contended: how many to skip */
    unsigned long long waits, hits, contended;
} cw; /* GIL-protected: only callers on event loops (GIL held) touch it */

/* A finished job its event loop has not drained after this long is committed by the rescue
   (the loop is gone, or blocked): the reservation never waits for a loop that stopped. */

static pthread_mutex_t ports_mu = PTHREAD_MUTEX_INITIALIZER;

/* A batch's signal is held back for at most this many listed jobs: holding it for a whole
   batch left the loop idle while the worker ran the batch, and the worker idle while the loop
   resumed it (measured at 32 tasks, interleaved runs: 8 against no bound, asyncio 1.36x and
   trio 1.29x the map+unmap rate on a quiet machine, 1.04x and 1.10x with a CPU hog; against
   no holding, 1.07x and 1.20x quiet, 1.17x and 1.01x with the hog). */
#define HOLD_MAX 8
static PortObj *all_ports;

static void
op_run(ExecJob *job)
{
    OpObj *o = OP_OF(job);
    if (o->op == OP_MAP)
        map_syscalls(&o->u.map);
    else if (o->op == OP_UNMAP)
        unmap_syscalls(&o->u.unmap);
    else if (o->op == OP_OPEN)
        open_syscalls(&o->u.open);
    else if (o->op == OP_RESERVE)
        reserve_syscalls(&o->u.reserve);
    else if (o->op == OP_CLOSE)
        close_syscalls(&o->u.close);
    else if (o->op == OP_EXTENT)
        extent_syscalls(&o->u.extent);
    else
        mem_syscalls(&o->u.mem);
}

/* Write the port's eventfd (its mutex held): the loop will drain. */
static void
port_signal(PortObj *p)
{
    uint64_t one = 1;
    p->signaled = 1;
    p->held = 0;
    while (write(p->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* In the worker: append to the port's list, and write the eventfd if the list was empty,
   unless more jobs are queued (`may_hold`) and fewer than HOLD_MAX are listed: then the signal
   is held back until the batch ends (the executor's release hook) or HOLD_MAX jobs wait, so
   that jobs submitted together reach the loop in few wake-ups while the loop still works on
   the first of them as the worker runs the rest. The write is made under the port's mutex: until the drain has taken the job, the
   port cannot go away (the job holds it), and the drain takes the list under the same mutex. */
static int
op_deliver_to(OpObj *o, int may_hold)
{
    PortObj *p = o->port;
    int held = 0;
    pthread_mutex_lock(&p->mu);
    if (o->waited == WAIT_WATCHED) { /* the caller takes it (op_wait): not listed */
        __atomic_store_n(&o->waited, WAIT_FINISHED, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    o->next_done = NULL;
    o->finished_at = exec_now();
    if (p->tail)
        p->tail->next_done = o;
    else
        p->head = o;
    p->tail = o;
    p->listed++;
    if (!p->signaled) {
        if (may_hold && p->listed < HOLD_MAX && exec_more_queued())
            held = p->held = 1;
        else
            port_signal(p);
    }
    pthread_mutex_unlock(&p->mu);
    return held ? EXEC_HELD : 0;
}

/* The executor asks for a rescue after every delivery (one listed behind another too). */
static int
op_deliver(ExecJob *job)
{
    return op_deliver_to(OP_OF(job), 1);
}

/* The executor's release hook: send every held signal. */
static void
release_held(void)
{
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port) {
        pthread_mutex_lock(&p->mu);
        if (p->held && !p->signaled)
            port_signal(p);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&ports_mu);
}

/* Whether the caller's thread should wait for `o` (op_wait): a short kind of job, the only
   one of its loop in flight, its loop's last drain not a batch (then other tasks are about to
   begin theirs: the loop has work, and waiting would only serialize it with the worker), and
   a worker watching the queue (it takes the job at once, on another CPU). */
static int
op_may_wait(OpObj *o)
{
    PortObj *p = o->port;
    /* Only the async API's ports (asyncio's "job", trio's tuple): their callers look at
       `delivered` after the begin; a job waited for is never handed to `how`. */
    if (!p->self_await && !PyTuple_Check(p->how))
        return 0;
    if (cw.wait <= 0 || (o->op != OP_MAP && o->op != OP_UNMAP && o->op != OP_OPEN) ||
        p->inflight != 1 || p->last_batch > 1 || !__atomic_load_n(&ex.spinning, __ATOMIC_RELAXED))
        return 0;
    if (cw.skip > 0) {
        cw.skip--;
        return 0;
    }
    return 1;
}

/* The caller's wait: a task that awaits op after op (one task, nothing else in flight) would
   otherwise park on every job, and the worker's eventfd write then wakes its sleeping thread:
   tens of microseconds of wake-up on a VM, for a syscall of a few. So, with a worker watching
   the queue, the caller's thread (the event loop's, GIL held: no other thread of the process
   could run Python meanwhile anyway for so short a time) watches the job for up to cw.wait.
   Done by then: it is committed and delivered here, and its await yields once only (so that
   other tasks still get their turn: see op_iternext). Not done: it is listed as usual, and
   the next waits are skipped (1, 2, 4... up to WAIT_BACKOFF). Waits during which this
   thread got clearly less CPU than it waited are counted (contended). */
static int
op_finished(void *o)
{
    return __atomic_load_n(&((OpObj *)o)->waited, __ATOMIC_ACQUIRE) == WAIT_FINISHED;
}

static void
op_wait(OpObj *o)
{
    PortObj *p = o->port;
    int contended = exec_watch(op_finished, o, cw.wait);
    pthread_mutex_lock(&p->mu);
    int hit = o->waited == WAIT_FINISHED;
    o->waited = WAIT_NONE; /* not finished: the worker lists it */
    pthread_mutex_unlock(&p->mu);
    cw.waits++;
    cw.hits += hit;
    cw.contended += contended;
    /* Only a miss backs off: a hit was worth it even on a shared CPU (the job was done by
       then, without the loop's thread going to sleep and being woken). Backing off on
       contended hits as well lost a third of the waits (and half the one-task rate) in a
       process whose other workers' timed wake-ups take the CPU for a moment now and then. */
    exec_backoff(hit, &cw.backoff, &cw.skip, WAIT_BACKOFF);
    if (!hit)
        return;
    op_commit(o);
    o->delivered = 1;
    o->must_yield = 1;
    p->inflight--;
    Py_DECREF(o); /* the executor's (the caller holds its own) */
}

/* The executor's reference (taken here) is given back by the drain. Without any worker (none
   could be started), the job runs right here, without the GIL: it still completes. */
static int
op_start(OpObj *o)
{
    PortObj *p = o->port;
    int flush;
    o->job.run = op_run;
    o->job.deliver = op_deliver;
    Py_INCREF(o);
    p->inflight++;
    /* Deferred wake-up only when other jobs of this loop are in flight: a lone job (one
       task) gains nothing from waiting for the flush, a batch saves a wake-up per job. */
    int wait = op_may_wait(o);
    if (wait)
        o->waited = WAIT_WATCHED;
    if (exec_submit(&o->job, p->schedule != NULL && p->inflight > 1, &flush) != 0) {
        o->waited = WAIT_NONE;
        Py_BEGIN_ALLOW_THREADS
        op_run(&o->job);
        Py_END_ALLOW_THREADS
        (void)op_deliver_to(o, 0);
        return 0;
    }
    if (wait)
        op_wait(o);
    if (flush && !p->flush_scheduled) {
        /* The worker is woken once per event-loop iteration, by the port's flush(). */
        p->flush_scheduled = 1;
        PyObject *cb = PyObject_GetAttr((PyObject *)p, str_flush);
        PyObject *r = cb ? PyObject_CallOneArg(p->schedule, cb) : NULL;
        Py_XDECREF(cb);
        if (r == NULL) { /* the job is queued all the same: wake now, report the error */
            p->flush_scheduled = 0;
            exec_flush();
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
}

/* An open job's commit: its descriptor in an OwnedFd (closed when that dies, so a job whose
   caller is gone leaks nothing), or the errno of the open. */
static PyObject *
open_commit(OpenJob *j)
{
    if (j->err)
        return PyLong_FromLong(j->err);
    OwnedFd *f = PyObject_New(OwnedFd, &OwnedFdType);
    if (f == NULL) {
        close(j->fd);
        j->fd = -1;
        return NULL;
    }
    f->fd = j->fd;
    j->fd = -1;
    return (PyObject *)f;
}

/* Commit once (GIL held; whoever comes first: the drain or the rescue). No Python code runs
   and nothing is collected meanwhile: the results are ints or the mapping. */
static void
op_commit(OpObj *o)
{
    if (o->committed)
        return;
    o->committed = 1;
    PyObject *r;
    if (o->op == OP_MAP)
        r = map_commit(o->core, o->m, &o->u.map);
    else if (o->op == OP_UNMAP)
        r = PyLong_FromLong(unmap_commit(o->core, o->m, &o->u.unmap));
    else if (o->op == OP_OPEN)
        r = open_commit(&o->u.open);
    else if (o->op == OP_RESERVE)
        r = reserve_commit(o->core, &o->u.reserve);
    else if (o->op == OP_CLOSE)
        r = PyLong_FromLong(close_commit(o->core, &o->u.close));
    else if (o->op == OP_EXTENT)
        r = PyLong_FromLong(extent_commit(o->core, &o->u.extent));
    else
        r = mem_commit(o->core, &o->u.mem);
    if (r == NULL) { /* committed all the same; the caller gets MemoryError */
        PyErr_Clear();
        r = Py_NewRef(Py_None);
    }
    o->result = r;
}

/* A new job for `port`, its task's `waiter` kept (allocated before anything is begun). */
static OpObj *
op_new(Core *c, PyObject *port, PyObject *waiter, int op)
{
    if (!PyObject_TypeCheck(port, &PortType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Port");
        return NULL;
    }
    if (((PortObj *)port)->efd < 0) {
        PyErr_SetString(PyExc_ValueError, "the port is closed");
        return NULL;
    }
    OpObj *o = PyObject_GC_New(OpObj, &OpType);
    if (o == NULL)
        return NULL;
    o->op = op;
    o->delivered = o->committed = 0;
    o->finished_at = 0;
    o->core = (Core *)Py_NewRef((PyObject *)c);
    o->m = NULL;
    o->port = (PortObj *)Py_NewRef(port);
    o->waiter = Py_NewRef(waiter);
    o->result = NULL;
    o->callback = o->cb_context = o->task = o->cancel_msg = NULL;
    o->blocking = o->must_yield = o->cancel_pending = 0;
    o->waited = WAIT_NONE;
    o->next_done = NULL;
    PyObject_GC_Track(o);
    return o;
}

/* The end of a job's begin, `r` and `code` as the begin returned them: the submitted job, or
   the code (nothing begun; the job is dropped). */
static PyObject *
op_begun(OpObj *o, MapObj *m, int r, long code)
{
    if (r <= 0) {
        Py_DECREF(o);
        return r < 0 ? NULL : PyLong_FromLong(code);
    }
    if (o->m == NULL && m != NULL)
        o->m = (MapObj *)Py_NewRef((PyObject *)m);
    if (op_start(o) < 0) { /* started all the same: it completes and is committed */
        Py_DECREF(o);
        return NULL;
    }
    return (PyObject *)o;
}

/* A new job of kind `op` on the mapping args[2] (args: port, waiter, m, ...). */
static OpObj *
op_on_mapping(Core *c, PyObject *const *args, int op, MapObj **m)
{
    *m = as_mapping(c, args[2]);
    return *m == NULL ? NULL : op_new(c, args[0], args[1], op);
}

/* _map_job(port, waiter, cls, offset, length, bits, kind, fd, file_offset, dev, protection,
   sharing, file, check_fd) -> the submitted job, or an int code (nothing begun; C_WOULD_BLOCK:
   the gate would wait, take the blocking path). check_fd: the job checks the descriptor
   first (its outcome is then (C_FILE, the check's result) when it refuses). */
static PyObject *
core_map_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14 && nargs != 15)
        return PyErr_Format(PyExc_TypeError, "_map_job: bad arguments");
    int check_fd = PyObject_IsTrue(args[13]);
    if (check_fd < 0)
        return NULL;
    OwnedFd *owned = NULL;
    if (nargs == 15 && args[14] != Py_None) {
        if (!PyObject_TypeCheck(args[14], &OwnedFdType)) {
            PyErr_SetString(PyExc_TypeError, "_map_job: owned must be an OwnedFd");
            return NULL;
        }
        owned = (OwnedFd *)args[14];
    }
    OpObj *o = op_new(c, args[0], args[1], OP_MAP);
    if (o == NULL)
        return NULL;
    long long offset;
    long code;
    MapObj *m = map_prepare(c, args + 2, &offset, &o->u.map);
    if (m == NULL) {
        Py_DECREF(o);
        return NULL;
    }
    o->u.map.check_fd = check_fd;
    o->m = m;
    int r = map_begin(c, m, offset, &o->u.map, 0, &code);
    if (r > 0 && owned != NULL && owned->fd == o->u.map.fd) {
        /* The job takes the descriptor (it closes it after the mmap, in the worker). */
        owned->fd = -1;
        o->u.map.close_fd = 1;
    }
    return op_begun(o, m, r, code);
}

/* _close_job(port, waiter) -> the submitted job, or an int code (0: closed already, a busy
   code, C_WOULD_BLOCK: the gate would wait, or holes need repair). */
static PyObject *
core_close_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_close_job(port, waiter)");
    OpObj *o = op_new(c, args[0], args[1], OP_CLOSE);
    if (o == NULL)
        return NULL;
    long code;
    int r = close_begin(c, &o->u.close, 0, &code);
    return op_begun(o, NULL, r, code);
}

/* _extend_job(port, waiter, size): an extend past max_size as a job -> the job, or an int code
   (C_WOULD_BLOCK: take the inline or the blocking path). */
static PyObject *
core_extend_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "_extend_job(port, waiter, size)");
    OpObj *o = op_new(c, args[0], args[1], OP_EXTENT);
    if (o == NULL)
        return NULL;
    long code;
    int r = extend_begin(c, args[2], &o->u.extent, &code);
    return op_begun(o, NULL, r, code);
}

/* _shrink_job(port, waiter, offset, size): a front shrink as a job; as _extend_job. */
static PyObject *
core_shrink_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4)
        return PyErr_Format(PyExc_TypeError, "_shrink_job(port, waiter, offset, size)");
    OpObj *o = op_new(c, args[0], args[1], OP_EXTENT);
    if (o == NULL)
        return NULL;
    long code;
    int r = shrink_begin(c, args[2], args[3], &o->u.extent, &code);
    return op_begun(o, NULL, r, code);
}

/* reserve_job(port, waiter, cls, address, size, max_size, headroom, alignment) -> the
   submitted job (its outcome: what reserve() returns). */
static PyObject *
reserve_job(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 8)
        return PyErr_Format(PyExc_TypeError, "reserve_job: bad arguments");
    ReserveJob rj;
    Core *c = reserve_prepare(args + 2, 6, &rj);
    if (c == NULL)
        return NULL;
    OpObj *o = op_new(c, args[0], args[1], OP_RESERVE);
    Py_DECREF(c);
    if (o == NULL)
        return NULL;
    o->u.reserve = rj;
    return op_begun(o, NULL, 1, 0);
}

/* _open_job(port, waiter, path, flags) -> the submitted job. Its outcome: (OwnedFd, the
   descriptor check's result (the size, or a negative AP_FD_* / -errno code), st_dev), or the
   errno of the open. */
static PyObject *
core_open_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4)
        return PyErr_Format(PyExc_TypeError, "_open_job(port, waiter, path, flags)");
    int flags = as_c_int(args[3]);
    if (flags == -1 && PyErr_Occurred())
        return NULL;
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(args[2], &bytes))
        return NULL;
    OpObj *o = op_new(c, args[0], args[1], OP_OPEN);
    if (o == NULL) {
        Py_DECREF(bytes);
        return NULL;
    }
    memset(&o->u.open, 0, sizeof o->u.open);
    o->u.open.path = bytes;
    o->u.open.flags = flags;
    o->u.open.fd = -1;
    return op_begun(o, NULL, 1, 0);
}

/* _unmap_job(port, waiter, m) -> the submitted job, or an int code (0: nothing to do, a busy
   code, C_WOULD_BLOCK). */
static PyObject *
core_unmap_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "_unmap_job(port, waiter, m)");
    MapObj *m;
    OpObj *o = op_on_mapping(c, args, OP_UNMAP, &m);
    if (o == NULL)
        return NULL;
    long code;
    int r = unmap_begin(c, m, 0, &o->u.unmap, &code);
    return op_begun(o, m, r, code);
}

/* _mem_job(port, waiter, kind, arg, m or None, lo, hi, need, obj) -> the submitted job, or
   what _mem returns when nothing began (C_WOULD_BLOCK: take the blocking path). */
static PyObject *
core_mem_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9)
        return PyErr_Format(PyExc_TypeError, "_mem_job(port, waiter, kind, arg, m, lo, hi, need, obj)");
    OpObj *o = op_new(c, args[0], args[1], OP_MEM);
    if (o == NULL)
        return NULL;
    MapObj *m;
    int need;
    if (mem_prepare(c, args + 2, &o->u.mem, &m, &need) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    long code;
    uint64_t where = 0;
    int r = mem_begin(c, m, &o->u.mem, need, 0, &code, &where);
    if (r <= 0) {
        Py_DECREF(o);
        return r < 0 ? NULL : mem_refused(code, where);
    }
    return op_begun(o, m, 1, 0);
}

/* _persist_job(port, waiter, m, start, end): _mem_job of a persist. */
static PyObject *
core_persist_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5)
        return PyErr_Format(PyExc_TypeError, "_persist_job(port, waiter, m, start, end)");
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    PyObject *full[9] = {args[0], args[1], zero, zero, args[2], args[3], args[4], zero, Py_None};
    PyObject *r = core_mem_job(c, full, 9);
    Py_DECREF(zero);
    return r;
}

static int
op_traverse(OpObj *o, visitproc visit, void *arg)
{
    Py_VISIT(o->waiter);
    Py_VISIT(o->result);
    Py_VISIT(o->callback);
    Py_VISIT(o->cb_context);
    Py_VISIT(o->task);
    Py_VISIT(o->cancel_msg);
    Py_VISIT((PyObject *)o->m);
    Py_VISIT((PyObject *)o->core);
    Py_VISIT((PyObject *)o->port);
    return 0;
}

static int
op_clear(OpObj *o)
{
    /* Only a job the executor no longer holds can be garbage: core, m and port stay for the
       dealloc (a commit needs them, and commits happen before the executor lets go). */
    Py_CLEAR(o->waiter);
    Py_CLEAR(o->result);
    Py_CLEAR(o->callback);
    Py_CLEAR(o->cb_context);
    Py_CLEAR(o->task);
    Py_CLEAR(o->cancel_msg);
    return 0;
}

static void
op_dealloc(OpObj *o)
{
    PyObject_GC_UnTrack(o);
    op_clear(o);
    if (o->op == OP_MEM)
        mem_discard(&o->u.mem);
    else if (o->op == OP_CLOSE)
        close_drop(&o->u.close); /* the references the committed close left */
    else if (o->op == OP_OPEN) {
        Py_CLEAR(o->u.open.path);
        if (o->u.open.fd >= 0) /* not committed (cannot happen once started) */
            close(o->u.open.fd);
    }
    Py_XDECREF((PyObject *)o->m);
    Py_XDECREF((PyObject *)o->core);
    Py_XDECREF((PyObject *)o->port);
    PyObject_GC_Del(o);
}

static PyObject *
op_outcome(OpObj *o, PyObject *unused)
{
    (void)unused;
    if (!o->delivered || o->result == NULL)
        return PyErr_Format(PyExc_RuntimeError, "the job is not done");
    if (o->result == Py_None) /* its commit could not make the result */
        return PyErr_NoMemory();
    if (o->op == OP_OPEN && !PyLong_CheckExact(o->result))
        return Py_BuildValue("(OLK)", o->result, (long long)o->u.open.check,
                             (unsigned long long)o->u.open.dev);
    if (o->op == OP_MAP && PyLong_CheckExact(o->result) && PyLong_AsLong(o->result) == C_FILE)
        return Py_BuildValue("(iL)", C_FILE, (long long)o->u.map.fsize);
    return Py_NewRef(o->result);
}

/* -- a job awaited itself -------------------------------------------------------------------
   asyncio: `await job` yields the job to the task, which takes it for a future (the protocol
   of asyncio.Task: _asyncio_future_blocking, get_loop, add_done_callback, cancel): the task
   registers its wake-up, which the port's drain calls at once (no future, no call_soon and no
   Handle per job). Its cancel() wakes the task at once with CancelledError and leaves the job
   running (a job is never abandoned: the task waits for it again, shielded). Once delivered,
   the await returns the outcome. trio (a port whose how is ("trio", reschedule, wait, yield)):
   `await job` yields trio's WaitTaskRescheduled message (its abort fails: nothing interrupts
   the wait), and the drain reschedules the task, which trio resumes with send(None): the
   await then returns the outcome. */

static PyObject *
op_await(OpObj *o)
{
    return Py_NewRef((PyObject *)o);
}

static PyObject *
op_iternext(OpObj *o)
{
    int trio = o->port->self_await == SELF_TRIO;
    if (!o->delivered) {
        if (trio) /* trio's WaitTaskRescheduled (the drain reschedules the task) */
            return Py_NewRef(PyTuple_GET_ITEM(o->port->how, 2));
        o->blocking = 1;
        return Py_NewRef((PyObject *)o);
    }
    if (o->must_yield) { /* delivered by the caller's wait: a bare yield, as asyncio.sleep(0)
                            (on trio, its CancelShieldedCheckpoint: a schedule point) */
        o->must_yield = 0;
        if (trio)
            return Py_NewRef(PyTuple_GET_ITEM(o->port->how, 3));
        Py_RETURN_NONE;
    }
    PyObject *r = op_outcome(o, NULL);
    if (r == NULL)
        return NULL;
    if (r == Py_None) { /* StopIteration(None): no exception object needed */
        Py_DECREF(r);
        return NULL;
    }
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, r);
    Py_DECREF(r);
    if (stop != NULL) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

/* send(value): as next() (trio resumes a task after its CancelShieldedCheckpoint with an
   Outcome, which the await does not need). */
static PyObject *
op_send(OpObj *o, PyObject *value)
{
    (void)value;
    PyObject *r = op_iternext(o);
    if (r == NULL && !PyErr_Occurred())
        PyErr_SetNone(PyExc_StopIteration);
    return r;
}

static PyObject *
op_get_loop(OpObj *o, PyObject *unused)
{
    (void)unused;
    return Py_NewRef(o->waiter != NULL ? o->waiter : Py_None);
}

static PyObject *str_call_soon, *str_context;
static int op_schedule_callback(OpObj *o);

/* A METH_FASTCALL|METH_KEYWORDS call's one optional keyword `name` (as a positional too when
   `positional`): *value set if given; -1 with TypeError for anything else. */
static int
one_keyword(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int positional,
            const char *name, PyObject **value)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > positional || nargs + nkw > 1 ||
        (nkw && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), name) != 0)) {
        PyErr_Format(PyExc_TypeError, "takes one optional argument: %s", name);
        return -1;
    }
    if (nargs + nkw)
        *value = args[0];
    return 0;
}

/* add_done_callback(fn, *, context=None): one callback (a later one replaces it: the task
   that awaits the job again). Called once delivered, it is scheduled as asyncio does. */
static PyObject *
op_add_done_callback(OpObj *o, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *ctx = Py_None;
    if (nargs < 1)
        return PyErr_Format(PyExc_TypeError, "add_done_callback(fn, *, context=None)");
    PyObject *fn = args[0];
    if (one_keyword(args + 1, nargs - 1, kwnames, 0, "context", &ctx) < 0)
        return NULL;
    Py_XSETREF(o->callback, Py_NewRef(fn));
    Py_XSETREF(o->cb_context, ctx == Py_None ? NULL : Py_NewRef(ctx));
    if (o->delivered) { /* as asyncio's: scheduled at once (with no loop: called) */
        if (o->waiter == NULL || o->waiter == Py_None) {
            PyObject *cb = o->callback;
            o->callback = NULL;
            Py_CLEAR(o->cb_context);
            PyObject *r = PyObject_CallOneArg(cb, (PyObject *)o);
            Py_DECREF(cb);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
            Py_RETURN_NONE;
        }
        if (op_schedule_callback(o) < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
op_remove_done_callback(OpObj *o, PyObject *fn)
{
    if (o->callback != NULL && (o->callback == fn || PyObject_RichCompareBool(o->callback, fn, Py_EQ) == 1)) {
        Py_CLEAR(o->callback);
        Py_CLEAR(o->cb_context);
        return PyLong_FromLong(1);
    }
    PyErr_Clear();
    return PyLong_FromLong(0);
}

/* Schedule the registered wake-up now (the loop's call_soon, in its context); 0 or -1. */
static int
op_schedule_callback(OpObj *o)
{
    PyObject *cb = o->callback, *ctx = o->cb_context;
    o->callback = o->cb_context = NULL;
    PyObject *kw = ctx == NULL ? NULL : PyTuple_Pack(1, str_context);
    PyObject *r = NULL;
    if (ctx == NULL || kw != NULL) {
        PyObject *call[4] = {o->waiter, cb, (PyObject *)o, ctx};
        r = PyObject_VectorcallMethod(str_call_soon, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                      kw);
    }
    Py_XDECREF(kw);
    Py_DECREF(cb);
    Py_XDECREF(ctx);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* cancel(msg=None): a task waiting for the job is woken at once, its result() raising
   CancelledError (once); it then waits for the job again, shielded (run_job's cancelled_job):
   a job is never abandoned. Nothing else is cancelled: False. (Refusing outright would leave
   the task suspended, and anyio's cancel delivery, which retries every loop iteration while a
   task of the scope has a cancellation pending, would spin the loop until the job ended.) */
static PyObject *
op_cancel(OpObj *o, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *msg = Py_None;
    if (one_keyword(args, nargs, kwnames, 1, "msg", &msg) < 0)
        return NULL;
    if (o->delivered || o->callback == NULL || o->waiter == NULL || o->waiter == Py_None)
        Py_RETURN_FALSE;
    /* The message goes with the error (anyio tells its own cancellations by it). */
    Py_XSETREF(o->cancel_msg, msg == Py_None ? NULL : Py_NewRef(msg));
    o->cancel_pending = 1;
    if (op_schedule_callback(o) < 0) {
        o->cancel_pending = 0;
        return NULL;
    }
    Py_RETURN_TRUE;
}

/* result(): None, or CancelledError once after a cancel() (see above). */
static PyObject *cancelled_error;

static PyObject *
op_result(OpObj *o, PyObject *unused)
{
    (void)unused;
    if (!o->cancel_pending)
        Py_RETURN_NONE;
    o->cancel_pending = 0;
    if (cancelled_error == NULL) {
        PyObject *mod = PyImport_ImportModule("asyncio");
        cancelled_error = mod ? PyObject_GetAttrString(mod, "CancelledError") : NULL;
        Py_XDECREF(mod);
        if (cancelled_error == NULL)
            return NULL;
    }
    PyObject *msg = o->cancel_msg;
    o->cancel_msg = NULL;
    PyObject *exc = msg == NULL ? PyObject_CallNoArgs(cancelled_error)
                                : PyObject_CallOneArg(cancelled_error, msg);
    Py_XDECREF(msg);
    if (exc != NULL) {
        PyErr_SetObject(cancelled_error, exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
op_false(OpObj *o, PyObject *unused)
{
    (void)o;
    (void)unused;
    Py_RETURN_FALSE;
}

static PyObject *
op_done(OpObj *o, PyObject *unused)
{
    (void)unused;
    return PyBool_FromLong(o->delivered);
}

static PyObject *
op_none(OpObj *o, PyObject *unused)
{
    (void)o;
    (void)unused;
    Py_RETURN_NONE;
}

static PyAsyncMethods op_as_async = {
    .am_await = (unaryfunc)op_await,
};

static PyMethodDef op_methods[] = {
    {"outcome", (PyCFunction)op_outcome, METH_NOARGS, "The committed result (once delivered)."},
    {"send", (PyCFunction)op_send, METH_O, "As next(): the value is not used."},
    {"get_loop", (PyCFunction)op_get_loop, METH_NOARGS,
     "The event loop it was begun on (on trio: its task)."},
    {"add_done_callback", (PyCFunction)(void (*)(void))op_add_done_callback,
     METH_FASTCALL | METH_KEYWORDS, "The awaiting task's wake-up (called by the drain)."},
    {"remove_done_callback", (PyCFunction)op_remove_done_callback, METH_O, NULL},
    {"cancel", (PyCFunction)(void (*)(void))op_cancel, METH_FASTCALL | METH_KEYWORDS,
     "Wake the waiting task with CancelledError; the job itself runs on (never abandoned)."},
    {"cancelled", (PyCFunction)op_false, METH_NOARGS, "Always False."},
    {"done", (PyCFunction)op_done, METH_NOARGS, "Whether it was delivered."},
    {"result", (PyCFunction)op_result, METH_NOARGS,
     "None (the await returns the outcome); CancelledError once after cancel()."},
    {"exception", (PyCFunction)op_none, METH_NOARGS, "None."},
    {NULL},
};

static PyMemberDef op_members[] = {
    {"waiter", T_OBJECT, offsetof(OpObj, waiter), 0, "the future or task that waits"},
    {"delivered", T_BOOL, offsetof(OpObj, delivered), READONLY,
     "committed and handed to its waiter"},
    {"task", T_OBJECT, offsetof(OpObj, task), READONLY,
     "the asyncio or trio task aio_begin began it for (else None)"},
    {"_asyncio_future_blocking", T_BOOL, offsetof(OpObj, blocking), 0,
     "asyncio's flag: set while a task is to wait for it"},
    {NULL},
};

static PyTypeObject OpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.Job",
    .tp_basicsize = sizeof(OpObj),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One map, unmap or persist of the async API, run by the executor.",
    .tp_traverse = (traverseproc)op_traverse,
    .tp_clear = (inquiry)op_clear,
    .tp_dealloc = (destructor)op_dealloc,
    .tp_as_async = &op_as_async,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)op_iternext,
    .tp_methods = op_methods,
    .tp_members = op_members,
};

/* -- ports --------------------------------------------------------------------------------- */

static PyObject *
port_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *how, *schedule = Py_None;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Port(how, schedule=None)");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O|O:Port", &how, &schedule) || check_how(how) < 0)
        return NULL;
    if (schedule != Py_None && !PyCallable_Check(schedule)) {
        PyErr_SetString(PyExc_TypeError, "Port: schedule must be callable or None");
        return NULL;
    }
    PortObj *p = (PortObj *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    if (schedule != Py_None)
        p->schedule = Py_NewRef(schedule);
    pthread_mutex_init(&p->mu, NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(p);
        return NULL;
    }
    p->how = Py_NewRef(how);
    p->self_await = PyUnicode_Check(how)                              ? SELF_ASYNCIO
                    : PyTuple_Check(how) && PyTuple_GET_SIZE(how) == 4 ? SELF_TRIO
                                                                       : 0;
    pthread_mutex_lock(&ports_mu);
    p->next_port = all_ports;
    if (all_ports)
        all_ports->prev_port = p;
    all_ports = p;
    p->registered = 1;
    pthread_mutex_unlock(&ports_mu);
    return (PyObject *)p;
}

static void
port_dealloc(PortObj *p)
{
    /* No job can be listed: each holds a reference to its port. */
    if (p->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)p);
    if (p->registered) {
        pthread_mutex_lock(&ports_mu);
        if (p->prev_port)
            p->prev_port->next_port = p->next_port;
        else if (all_ports == p)
            all_ports = p->next_port;
        if (p->next_port)
            p->next_port->prev_port = p->prev_port;
        pthread_mutex_unlock(&ports_mu);
    }
    if (p->efd >= 0)
        close(p->efd);
    pthread_mutex_destroy(&p->mu);
    Py_XDECREF(p->how);
    Py_XDECREF(p->schedule);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* drain(): on the event loop, when the eventfd is readable: commit every finished job (no
   Python code runs meanwhile), then wake each one's task. */
static PyObject *
port_drain(PortObj *p, PyObject *unused)
{
    (void)unused;
    uint64_t v;
    while (read(p->efd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&p->mu);
    OpObj *list = p->head;
    p->head = p->tail = NULL;
    p->signaled = p->held = 0;
    p->listed = 0;
    pthread_mutex_unlock(&p->mu);
    p->last_batch = 0;
    for (OpObj *o = list; o; o = o->next_done, p->last_batch++)
        op_commit(o);
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    for (OpObj *o = list, *next; o; o = next) {
        next = o->next_done;
        o->next_done = NULL;
        o->delivered = 1;
        p->inflight--; /* first: the task woken below may begin its next job at once */
        int rc = 0;
        if (p->self_await == SELF_TRIO && o->waiter != NULL) { /* resumed with send(None) */
            rc = trio_reschedule(o->waiter);
            if (rc == 0) { /* trio's own reschedule */
                PyObject *r = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(p->how, 1),
                                                           o->waiter, Py_None, NULL);
                rc = r == NULL ? -1 : 0;
                Py_XDECREF(r);
            }
            else if (rc > 0)
                rc = 0;
        }
        else if (p->self_await == SELF_ASYNCIO) {
            /* The awaiting task's wake-up, called here: the drain runs as a callback of the
               loop, outside any task, as a Handle of call_soon would. */
            PyObject *cb = o->callback, *ctx = o->cb_context;
            o->callback = o->cb_context = NULL;
            if (cb != NULL) {
                if (ctx != NULL && PyContext_Enter(ctx) < 0)
                    rc = -1;
                else {
                    PyObject *r = PyObject_CallOneArg(cb, (PyObject *)o);
                    rc = r == NULL ? -1 : 0;
                    Py_XDECREF(r);
                    if (ctx != NULL && PyContext_Exit(ctx) < 0 && rc == 0)
                        rc = -1;
                }
            }
            Py_XDECREF(cb);
            Py_XDECREF(ctx);
        }
        else if (!p->self_await && o->waiter != NULL)
            rc = wake_waiter(o->waiter, p->how, (PyObject *)o);
        if (rc < 0) {
            if (type == NULL)
                PyErr_Fetch(&type, &value, &tb);
            else
                PyErr_WriteUnraisable((PyObject *)p);
        }
        Py_DECREF(o); /* the executor's */
    }
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
port_fileno(PortObj *p, PyObject *unused)
{
    (void)unused;
    if (p->efd < 0)
        return PyErr_Format(PyExc_ValueError, "the port is closed");
    return PyLong_FromLong(p->efd);
}

/* close(): release the eventfd now (its event loop is done with it); a port with jobs in
   flight keeps it until they are drained... by nobody, so until the port dies. */
static PyObject *
port_close(PortObj *p, PyObject *unused)
{
    (void)unused;
    if (p->efd >= 0 && p->inflight == 0) {
        close(p->efd);
        p->efd = -1;
    }
    Py_RETURN_NONE;
}

/* flush(): the deferred wake-up of the workers for the jobs submitted since the last one. */
static PyObject *
port_flush(PortObj *p, PyObject *unused)
{
    (void)unused;
    p->flush_scheduled = 0;
    exec_flush();
    Py_RETURN_NONE;
}

static PyMethodDef port_methods[] = {
    {"flush", (PyCFunction)port_flush, METH_NOARGS,
     "Wake a worker for the jobs submitted since the last flush (the loop calls it soon)."},
    {"drain", (PyCFunction)port_drain, METH_NOARGS,
     "Commit the finished jobs and wake their tasks (on the port's event loop)."},
    {"fileno", (PyCFunction)port_fileno, METH_NOARGS,
     "The eventfd to watch: readable when finished jobs wait."},
    {"close", (PyCFunction)port_close, METH_NOARGS,
     "Release the eventfd (unless jobs are in flight: then when the port dies)."},
    {NULL},
};

static PyMemberDef port_members[] = {
    {"how", T_OBJECT, offsetof(PortObj, how), READONLY, "how a job's task is woken"},
    {"fd", T_INT, offsetof(PortObj, efd), READONLY, "the eventfd, -1 once closed"},
    {NULL},
};

static PyTypeObject PortType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.Port",
    .tp_basicsize = sizeof(PortObj),
    .tp_weaklistoffset = offsetof(PortObj, weakreflist),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Port(how, schedule=None): where one event loop's finished jobs wait for it; "
              "schedule (the loop's call_soon) defers worker wake-ups to one per iteration.",
    .tp_new = port_new,
    .tp_dealloc = (destructor)port_dealloc,
    .tp_methods = port_methods,
    .tp_members = port_members,
};

/* The executor's rescue hook (an idle worker, no GIL): commit the finished jobs that waited
   EXEC_RESCUE_AFTER or longer for their event loop's drain (the loop stopped, or is blocked):
   their admissions and claims are given back whatever becomes of the loop; the loop's drain,
   if it ever comes, then only wakes their tasks. Returns when to look again (0: nothing waits). */
static unsigned long long rescued;

#if PY_VERSION_HEX >= 0x030D0000
#define IS_FINALIZING() Py_IsFinalizing()
#else
#define IS_FINALIZING() _Py_IsFinalizing()
#endif

static double
rescue_ports(void)
{
    double now = exec_now(), oldest = 0;
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port) {
        pthread_mutex_lock(&p->mu);
        for (OpObj *o = p->head; o; o = o->next_done)
            if (!o->committed && (oldest == 0 || o->finished_at < oldest))
                oldest = o->finished_at;
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&ports_mu);
    if (oldest == 0)
        return 0;
    if (now - oldest < EXEC_RESCUE_AFTER)
        return EXEC_RESCUE_AFTER - (now - oldest);
    if (IS_FINALIZING())
        return 0;
    PyGILState_STATE g = PyGILState_Ensure();
    /* Under the GIL no drain runs; a job is committed at most once (its flag). */
    now = exec_now();
    double next = 0;
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port) {
        pthread_mutex_lock(&p->mu);
        for (OpObj *o = p->head; o; o = o->next_done) {
            if (o->committed)
                continue;
            if (now - o->finished_at >= EXEC_RESCUE_AFTER) {
                op_commit(o);
                rescued++;
            }
            else if (next == 0 || EXEC_RESCUE_AFTER - (now - o->finished_at) < next)
                next = EXEC_RESCUE_AFTER - (now - o->finished_at);
        }
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&ports_mu);
    PyGILState_Release(g);
    return next;
}

/* fork(): every mutex a worker may hold is taken by the forking thread across the fork, in the
   lock order (ports_mu, each port's, the executor's, dev_mu, inj_mu), so the child's copies
   are consistent and none is held by a thread that does not exist there. */
static void
core_fork_prepare(void)
{
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port)
        pthread_mutex_lock(&p->mu);
    exec_fork_prepare();
    pthread_mutex_lock(&dev_mu);
    pthread_mutex_lock(&inj_mu);
}

static void
core_fork_parent(void)
{
    pthread_mutex_unlock(&inj_mu);
    pthread_mutex_unlock(&dev_mu);
    exec_fork_parent();
    for (PortObj *p = all_ports; p; p = p->next_port)
        pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&ports_mu);
}

static void
core_fork_child(void)
{
    pthread_mutex_init(&inj_mu, NULL);
    pthread_mutex_init(&dev_mu, NULL);
    exec_fork_child();
    for (PortObj *p = all_ports; p; p = p->next_port)
        pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&ports_mu, NULL);
}

/* executor_after_fork(): called in a forked child (os.register_at_fork). */
static PyObject *
executor_after_fork(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    int pending = 0;
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p && !pending; p = p->next_port)
        for (OpObj *o = p->head; o && !pending; o = o->next_done)
            pending = !o->committed;
    pthread_mutex_unlock(&ports_mu);
    int e = exec_after_fork(pending);
    if (e) {
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* executor_stats() -> dict of the executor's counters. */
static PyObject *
executor_stats(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    pthread_mutex_lock(&ex.mu);
    long threads = ex.threads, idle = ex.idle, running = ex.running, spare = ex.spare,
         queued = ex.queued, max_workers = ex.max_workers;
    unsigned long long started = ex.started, retired = ex.retired, ran = ex.ran;
    unsigned long long spins = ex.spins, spin_hits = ex.spin_hits,
                       spin_contended = ex.spin_contended;
    double spin = ex.spin;
    double idle_exit = ex.idle_exit;
    pthread_mutex_unlock(&ex.mu);
    return Py_BuildValue("{slslslslslslsdsdsKsKsKsKsKsKsKsdsKsKsK}", "threads", threads, "idle",
                         idle, "running", running, "spare", spare, "queued", queued,
                         "max_workers", max_workers, "idle_exit", idle_exit, "spin", spin,
                         "started", started, "retired", retired, "ran", ran, "rescued", rescued,
                         "spins", spins, "spin_hits", spin_hits, "spin_contended",
                         spin_contended, "wait", cw.wait, "waits", cw.waits, "wait_hits",
                         cw.hits, "wait_contended", cw.contended);
}

/* executor_configure(max_workers, idle_exit, spin=None, wait=None): None leaves a setting as
   it is. */
static PyObject *
executor_configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 2 || nargs > 4)
        return PyErr_Format(PyExc_TypeError,
                            "executor_configure(max_workers, idle_exit, spin=None, wait=None)");
    long n = -1;
    double t = -1, sp = -1, w = -1;
    PyObject *spin = nargs >= 3 ? args[2] : Py_None;
    PyObject *wait = nargs == 4 ? args[3] : Py_None;
    if (wait != Py_None && ((w = PyFloat_AsDouble(wait)) == -1 && PyErr_Occurred()))
        return NULL;
    if (args[0] != Py_None && ((n = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred()))
        return NULL;
    if (args[1] != Py_None && ((t = PyFloat_AsDouble(args[1])) == -1 && PyErr_Occurred()))
        return NULL;
    if (spin != Py_None && ((sp = PyFloat_AsDouble(spin)) == -1 && PyErr_Occurred()))
        return NULL;
    if ((args[0] != Py_None && (n < 1 || n > 1024)) ||
        (args[1] != Py_None && !(t > 0 && t <= 86400)) ||
        (spin != Py_None && !(sp >= 0 && sp <= 0.01)) ||
        (wait != Py_None && !(w >= 0 && w <= 0.001))) {
        PyErr_SetString(PyExc_ValueError, "max_workers: 1..1024, idle_exit: (0, 86400], spin: "
                                          "[0, 0.01], wait: [0, 0.001]");
        return NULL;
    }
    if (wait != Py_None) { /* GIL held: cw is the callers' */
        cw.wait = w;
        cw.skip = cw.backoff = 0;
    }
    pthread_mutex_lock(&ex.mu);
    if (n > 0)
        ex.max_workers = (int)n;
    if (t > 0)
        ex.idle_exit = t;
    if (spin != Py_None) {
        ex.spin = sp;
        ex.spin_skip = ex.spin_backoff = 0;
    }
    /* Waiting ones look at the new deadline and bound (the surplus retires). */
    pthread_cond_broadcast(&ex.idle_cv);
    pthread_cond_broadcast(&ex.spare_cv);
    pthread_mutex_unlock(&ex.mu);
    Py_RETURN_NONE;
}

/* -- the prologue of a job --------------------------------------------------------------------
   What the async API does on asyncio (and on trio: see trio's side below) before every job, as
   one C call (as Python it was about
   a quarter of the loop's work per operation): find the running loop and task, ask whether a
   cancellation is due (anyio's walk over the task's cancel scopes: the innermost scope out, up
   to a shield), find the loop's port, and begin. Set up once by aio_configure() from Python,
   which passes asyncio's and anyio's objects; with anyio's task states unknown (None), every
   call that is not `always` leaves the decision to the Python path. */

static struct {
    PyObject *get_loop, *current_task, *states, *make_port; /* strong */
    PyObject *loop_ref, *port_ref;                          /* the last loop and its port, weakly */
    PyTypeObject *scope_type, *state_type; /* anyio's CancelScope and TaskState (strong) */
} aio;

/* An attribute read (and written) straight from its slot when the object is exactly of the
   type whose __slots__ member it is (located once: slot_locate), else by name. */
typedef struct {
    PyTypeObject *tp; /* borrowed from the configuration, which holds the type */
    Py_ssize_t off;   /* -1: unknown, by name only */
    PyObject *name;
} Slot;

/* Locate the slot `name` of `tp` (None or a type without it: by name only); 0, or -1 with an
   exception (out of memory). */
static int
slot_locate(Slot *s, PyTypeObject *tp, const char *name)
{
    PyObject *interned = PyUnicode_InternFromString(name);
    if (interned == NULL)
        return -1;
    Py_XSETREF(s->name, interned);
    s->tp = tp;
    s->off = -1;
    PyObject *d = tp == NULL || tp->tp_dict == NULL
                      ? NULL
                      : PyDict_GetItemWithError(tp->tp_dict, interned);
    /* (borrowed; a member of tp's own, not one borrowed from another class) */
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type) || PyDescr_TYPE(d) != tp) {
        PyErr_Clear();
        return 0;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if ((m->type == T_OBJECT_EX || m->type == T_OBJECT) && !(m->flags & READONLY))
        s->off = m->offset;
    return 0;
}

/* obj.<name>, a new reference. */
static inline PyObject *
slot_get(PyObject *obj, const Slot *s)
{
    if (s->off >= 0 && Py_IS_TYPE(obj, s->tp)) {
        PyObject *v = *(PyObject **)((char *)obj + s->off);
        if (v != NULL)
            return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, s->name); /* (an unset slot: its AttributeError) */
}

/* obj.<name> = v (v borrowed); 0 or -1. */
static inline int
slot_set(PyObject *obj, const Slot *s, PyObject *v)
{
    if (s->off >= 0 && Py_IS_TYPE(obj, s->tp)) {
        PyObject **at = (PyObject **)((char *)obj + s->off);
        Py_XSETREF(*at, Py_NewRef(v));
        return 0;
    }
    return PyObject_SetAttr(obj, s->name, v);
}

/* Whether obj.<name> is true: 1, 0, or -1. */
static inline int
slot_true(PyObject *obj, const Slot *s)
{
    PyObject *v = slot_get(obj, s);
    int t = v == NULL ? -1 : v == Py_False ? 0 : v == Py_True ? 1 : PyObject_IsTrue(v);
    Py_XDECREF(v);
    return t;
}

static Slot sl_cancel_scope, sl_cancel_called, sl_shield, sl_parent_scope;

/* aio_configure(get_running_loop, current_task, states or None, make_port, CancelScope or
   None, TaskState or None) */
static PyObject *
aio_configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1]) ||
        (args[2] != Py_None && !PyDict_Check(args[2])) || !PyCallable_Check(args[3]) ||
        (args[4] != Py_None && !PyType_Check(args[4])) || (args[5] != Py_None && !PyType_Check(args[5])))
        return PyErr_Format(PyExc_TypeError, "aio_configure(get_running_loop, current_task, "
                                             "states, make_port, CancelScope, TaskState)");
    Py_XSETREF(aio.get_loop, Py_NewRef(args[0]));
    Py_XSETREF(aio.current_task, Py_NewRef(args[1]));
    Py_XSETREF(aio.states, args[2] == Py_None ? NULL : Py_NewRef(args[2]));
    Py_XSETREF(aio.make_port, Py_NewRef(args[3]));
    Py_XSETREF(aio.scope_type, args[4] == Py_None ? NULL : (PyTypeObject *)Py_NewRef(args[4]));
    Py_XSETREF(aio.state_type, args[5] == Py_None ? NULL : (PyTypeObject *)Py_NewRef(args[5]));
    Py_CLEAR(aio.loop_ref);
    Py_CLEAR(aio.port_ref);
    if (slot_locate(&sl_cancel_scope, aio.state_type, "cancel_scope") < 0 ||
        slot_locate(&sl_cancel_called, aio.scope_type, "_cancel_called") < 0 ||
        slot_locate(&sl_shield, aio.scope_type, "_shield") < 0 ||
        slot_locate(&sl_parent_scope, aio.scope_type, "_parent_scope") < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* 1 if a checkpoint would raise in `task` now (anyio's walk), 0 if not, -1 on error. Without
   anyio's task states: 1. */
static int
aio_due(PyObject *task)
{
    if (aio.states == NULL)
        return 1;
    if (task == Py_None)
        return 0;
    PyObject *ref = PyWeakref_NewRef(task, NULL);
    if (ref == NULL)
        return -1;
    PyObject *state = PyDict_GetItemWithError(aio.states, ref); /* borrowed */
    Py_DECREF(ref);
    if (state == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(state);
    PyObject *scope = slot_get(state, &sl_cancel_scope);
    Py_DECREF(state);
    int due = 0;
    while (scope != NULL && scope != Py_None) {
        int t = slot_true(scope, &sl_cancel_called);
        if (t != 0) {
            due = t;
            break;
        }
        t = slot_true(scope, &sl_shield);
        if (t != 0) {
            due = t < 0 ? -1 : 0;
            break;
        }
        PyObject *parent = slot_get(scope, &sl_parent_scope);
        Py_DECREF(scope);
        scope = parent;
    }
    if (scope == NULL)
        return -1;
    Py_DECREF(scope);
    return due;
}

/* -- trio's side of the prologue --------------------------------------------------------------
   The same on trio (set up by aio_configure_trio() on the first job of a process under trio,
   where trio's layout is the one known here): the running task (trio's run context), whether a
   checkpoint would raise in it (its cancel status, or a KeyboardInterrupt pending for the main
   task; when not, the cancel point is counted as trio counts it), and the run's port (its
   RunVar's value). The job is then awaited itself: it yields trio's WaitTaskRescheduled, and
   the drain reschedules the task. */

static struct {
    PyObject *ctx, *var, *make_port, *task_type, *status_type, *runner_type; /* strong */
} trio_;
static Slot sl_runner, sl_cancel_status, sl_cancel_points, sl_eff_cancelled, sl_ki_pending,
    sl_main_task, sl_locals, sl_coro, sl_next_send_fn, sl_next_send, sl_abort_func,
    sl_custom_sleep_data, sl_runq, sl_is_guest, sl_instruments;
static PyObject *small_ints[2]; /* 0 and 1 (made at import) */
static PyObject *str_task, *str_data, *str_append, *str_task_scheduled;
static PyObject *str_send; /* (interned at import: OpeningBase's too) */

/* aio_configure_trio(run_context, port_var, make_port, Task, CancelStatus, Runner) */
static PyObject *
aio_configure_trio(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6 || !PyCallable_Check(args[2]) || !PyType_Check(args[3]) ||
        !PyType_Check(args[4]) || !PyType_Check(args[5]))
        return PyErr_Format(PyExc_TypeError, "aio_configure_trio(run_context, port_var, "
                                             "make_port, Task, CancelStatus, Runner)");
    static const struct {
        PyObject **s;
        const char *text;
    } names[] = {
        {&str_task, "task"}, {&str_data, "data"}, {&str_append, "append"},
        {&str_task_scheduled, "task_scheduled"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (*names[i].s == NULL && (*names[i].s = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    Py_XSETREF(trio_.ctx, Py_NewRef(args[0]));
    Py_XSETREF(trio_.var, Py_NewRef(args[1]));
    Py_XSETREF(trio_.make_port, Py_NewRef(args[2]));
    Py_XSETREF(trio_.task_type, Py_NewRef(args[3]));
    Py_XSETREF(trio_.status_type, Py_NewRef(args[4]));
    Py_XSETREF(trio_.runner_type, Py_NewRef(args[5]));
    PyTypeObject *task = (PyTypeObject *)trio_.task_type, *status = (PyTypeObject *)trio_.status_type,
                 *runner = (PyTypeObject *)trio_.runner_type;
    const struct {
        Slot *slot;
        PyTypeObject *tp;
        const char *name;
    } slots[] = {
        {&sl_runner, task, "_runner"}, {&sl_cancel_status, task, "_cancel_status"},
        {&sl_cancel_points, task, "_cancel_points"}, {&sl_coro, task, "coro"},
        {&sl_next_send_fn, task, "_next_send_fn"}, {&sl_next_send, task, "_next_send"},
        {&sl_abort_func, task, "_abort_func"}, {&sl_custom_sleep_data, task, "custom_sleep_data"},
        {&sl_eff_cancelled, status, "effectively_cancelled"},
        {&sl_ki_pending, runner, "ki_pending"}, {&sl_main_task, runner, "main_task"},
        {&sl_locals, runner, "_locals"}, {&sl_runq, runner, "runq"},
        {&sl_is_guest, runner, "is_guest"}, {&sl_instruments, runner, "instruments"},
    };
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (slot_locate(slots[i].slot, slots[i].tp, slots[i].name) < 0)
            return NULL;
    Py_RETURN_NONE;
}

/* trio's Runner.reschedule(task, None), for a task of the configured trio that waits (its
   _next_send_fn None) in a run with no instrument for task_scheduled and not a guest run with
   an empty run queue (there trio also forces a guest tick): the same stores in the same order,
   without a Python frame. 1 done, 0 not done (call trio's own), -1 an exception. */
static int
trio_reschedule(PyObject *task)
{
    if (trio_.task_type == NULL || !Py_IS_TYPE(task, (PyTypeObject *)trio_.task_type) ||
        sl_next_send_fn.off < 0 || sl_runq.off < 0)
        return 0;
    PyObject *runner = slot_get(task, &sl_runner);
    if (runner == NULL)
        return -1;
    int done = 0;
    PyObject *fn = NULL, *ins = NULL, *data = NULL, *runq = NULL, *coro = NULL, *send = NULL;
    if (!Py_IS_TYPE(runner, (PyTypeObject *)trio_.runner_type))
        goto out;
    if ((fn = slot_get(task, &sl_next_send_fn)) == NULL)
        goto fail;
    if (fn != Py_None) /* not waiting: trio's own asserts */
        goto out;
    if ((ins = slot_get(runner, &sl_instruments)) == NULL || (data = PyObject_GetAttr(ins, str_data)) == NULL)
        goto fail;
    if (!PyDict_CheckExact(data)) /* not the layout known here */
        goto out;
    int c = PyDict_Contains(data, str_task_scheduled);
    if (c != 0) {
        if (c < 0)
            goto fail;
        goto out;
    }
    if ((runq = slot_get(runner, &sl_runq)) == NULL)
        goto fail;
    Py_ssize_t n = PyObject_Length(runq);
    if (n < 0)
        goto fail;
    if (n == 0) {
        int g = slot_true(runner, &sl_is_guest);
        if (g != 0) {
            if (g < 0)
                goto fail;
            goto out;
        }
    }
    if ((coro = slot_get(task, &sl_coro)) == NULL || (send = PyObject_GetAttr(coro, str_send)) == NULL)
        goto fail;
    if (slot_set(task, &sl_next_send_fn, send) < 0 || slot_set(task, &sl_next_send, Py_None) < 0 ||
        slot_set(task, &sl_abort_func, Py_None) < 0 ||
        slot_set(task, &sl_custom_sleep_data, Py_None) < 0)
        goto fail;
    PyObject *r = PyObject_CallMethodOneArg(runq, str_append, task);
    if (r == NULL)
        goto fail;
    Py_DECREF(r);
    done = 1;
    goto out;
fail:
    done = -1;
out:
    Py_XDECREF(send);
    Py_XDECREF(coro);
    Py_XDECREF(runq);
    Py_XDECREF(data);
    Py_XDECREF(ins);
    Py_XDECREF(fn);
    Py_DECREF(runner);
    return done;
}

/* 1 if trio's checkpoint_if_cancelled() would raise in `task` now, 0 if not (the cancel
   point counted), -1 on error. */
static int
trio_due(PyObject *task, PyObject *runner)
{
    PyObject *status = slot_get(task, &sl_cancel_status);
    int t = status == NULL ? -1 : slot_true(status, &sl_eff_cancelled);
    Py_XDECREF(status);
    if (t != 0)
        return t;
    t = slot_true(runner, &sl_ki_pending);
    if (t != 0) {
        if (t < 0)
            return -1;
        PyObject *main = slot_get(runner, &sl_main_task);
        if (main == NULL)
            return -1;
        Py_DECREF(main);
        if (main == task)
            return 1;
    }
    PyObject *n = slot_get(task, &sl_cancel_points);
    PyObject *n1 = n ? PyNumber_Add(n, small_ints[1]) : NULL;
    Py_XDECREF(n);
    t = n1 ? slot_set(task, &sl_cancel_points, n1) : -1;
    Py_XDECREF(n1);
    return t;
}

/* trio's prologue: as aio_prologue's, with the task as *loop (a job's waiter on trio). */
static int
trio_prologue(int always, PyObject **loop, PyObject **task, PyObject **port)
{
    if (trio_.ctx == NULL)
        return 0;
    *task = PyObject_GetAttr(trio_.ctx, str_task);
    if (*task == NULL) { /* not in a task of a trio run: the Python path says what is wrong */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    PyObject *runner = slot_get(*task, &sl_runner);
    int due = runner == NULL ? -1 : always ? 0 : trio_due(*task, runner);
    PyObject *locals = due == 0 ? slot_get(runner, &sl_locals) : NULL;
    Py_XDECREF(runner);
    *port = NULL;
    if (locals != NULL) {
        if (PyDict_Check(locals)) {
            *port = Py_XNewRef(PyDict_GetItemWithError(locals, trio_.var));
            if (*port == NULL && !PyErr_Occurred())
                *port = PyObject_CallNoArgs(trio_.make_port);
        }
        else
            PyErr_SetString(PyExc_TypeError, "trio's run locals: not a dict");
        Py_DECREF(locals);
    }
    if (*port == NULL) {
        Py_DECREF(*task);
        return due < 0 || PyErr_Occurred() ? -1 : 0;
    }
    *loop = Py_NewRef(*task);
    return 1;
}

/* aio_cancel_due(task) -> bool */
static PyObject *
aio_cancel_due(PyObject *module, PyObject *task)
{
    (void)module;
    int due;
    if (trio_.task_type != NULL && Py_IS_TYPE(task, (PyTypeObject *)trio_.task_type)) {
        PyObject *runner = slot_get(task, &sl_runner);
        due = runner == NULL ? -1 : trio_due(task, runner);
        Py_XDECREF(runner);
    }
    else
        due = aio_due(task);
    return due < 0 ? NULL : PyBool_FromLong(due);
}

/* The port of `loop` (new reference): the last one used, or make_port(loop). */
static PyObject *
aio_port(PyObject *loop)
{
    if (aio.loop_ref != NULL && PyWeakref_GET_OBJECT(aio.loop_ref) == loop) {
        PyObject *port = PyWeakref_GET_OBJECT(aio.port_ref);
        if (port != Py_None)
            return Py_NewRef(port);
    }
    PyObject *port = PyObject_CallOneArg(aio.make_port, loop);
    if (port == NULL)
        return NULL;
    PyObject *lr = PyWeakref_NewRef(loop, NULL), *pr = lr ? PyWeakref_NewRef(port, NULL) : NULL;
    if (pr == NULL) {
        Py_XDECREF(lr);
        PyErr_Clear(); /* not cached: found again next time */
        return port;
    }
    Py_XSETREF(aio.loop_ref, lr);
    Py_XSETREF(aio.port_ref, pr);
    return port;
}

/* The prologue (GIL held): 1 with new references to the running loop (on trio: the task),
   its task and port in *loop, *task, *port; 0: the Python path decides (not an asyncio or
   trio task, or a cancellation due: the checkpoint is Python's); -1: an exception. */
static int
aio_prologue(int always, PyObject **loop, PyObject **task, PyObject **port)
{
    *loop = PyObject_CallNoArgs(aio.get_loop);
    if (*loop == NULL || *loop == Py_None) {
        Py_XDECREF(*loop);
        return *loop == NULL ? -1 : trio_prologue(always, loop, task, port);
    }
    *task = PyObject_CallOneArg(aio.current_task, *loop);
    if (*task == NULL || *task == Py_None) {
        int r = *task == NULL ? -1 : 0;
        Py_XDECREF(*task);
        Py_DECREF(*loop);
        return r == 0 ? trio_prologue(always, loop, task, port) : r; /* a trio guest run? */
    }
    int due = always ? 0 : aio_due(*task);
    *port = due == 0 ? aio_port(*loop) : NULL;
    if (*port == NULL) {
        Py_DECREF(*task);
        Py_DECREF(*loop);
        return due < 0 || PyErr_Occurred() ? -1 : 0;
    }
    return 1;
}

/* The begun job (a new reference) takes the task; the prologue's other references go. */
static PyObject *
aio_begun(PyObject *job, PyObject *loop, PyObject *task, PyObject *port)
{
    Py_DECREF(port);
    Py_DECREF(loop);
    if (job != NULL && Py_IS_TYPE(job, &OpType))
        Py_XSETREF(((OpObj *)job)->task, task);
    else
        Py_DECREF(task);
    return job;
}

/* aio_begin(begin, args, always) -> the job begun (its .task set), what begin returned instead
   of a job (a code: nothing began), or None: the Python path decides (no running asyncio or
   trio task, a cancellation due, anyio's task states unknown, trio's side not set up). */
static PyObject *
aio_begin(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyTuple_Check(args[1]) || aio.get_loop == NULL)
        return PyErr_Format(PyExc_TypeError, "aio_begin(begin, args, always) after aio_configure");
    int always = PyObject_IsTrue(args[2]);
    if (always < 0)
        return NULL;
    PyObject *loop, *task, *port;
    int r = aio_prologue(always, &loop, &task, &port);
    if (r <= 0) {
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args[1]);
    PyObject *small[18], **stack = small;
    if (n + 3 > 18 && (stack = PyMem_Malloc((n + 3) * sizeof(PyObject *))) == NULL)
        return aio_begun(PyErr_NoMemory(), loop, task, port);
    stack[1] = port;
    stack[2] = loop;
    for (Py_ssize_t i = 0; i < n; i++)
        stack[3 + i] = PyTuple_GET_ITEM(args[1], i);
    PyObject *job = PyObject_Vectorcall(args[0], stack + 1, (n + 2) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                        NULL);
    if (stack != small)
        PyMem_Free(stack);
    return aio_begun(job, loop, task, port);
}

/* aio_unmap(m) -> as aio_begin(m's reservation's _unmap_job, (m,), True), in one call: the
   path of every async unmap. */
static PyObject *
aio_unmap(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyObject_TypeCheck(arg, &MapType) || aio.get_loop == NULL)
        return PyErr_Format(PyExc_TypeError, "aio_unmap(mapping) after aio_configure");
    PyObject *rsv = ((MapObj *)arg)->rsv;
    if (rsv == NULL || !PyObject_TypeCheck(rsv, &CoreType))
        Py_RETURN_NONE; /* the Python path says what is wrong */
    PyObject *loop, *task, *port;
    int r = aio_prologue(1, &loop, &task, &port);
    if (r <= 0) {
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(rsv); /* (the mapping keeps it; held across the begin all the same) */
    PyObject *a[3] = {port, loop, arg};
    PyObject *job = core_unmap_job((Core *)rsv, a, 3);
    Py_DECREF(rsv);
    return aio_begun(job, loop, task, port);
}

/* -- the map of a plain descriptor (asyncio or trio), in one C call ---------------------------
   map_file(fd, offset, length=..., ...) with every argument of its plain type and in range
   (what Reservation._fd_plan accepts) is the path of every such async map: its checks, the
   prologue and the begin here. Set up by aio_configure_map() with the core's Mapping class,
   Protection, Sharing, Sharing.SHARED, the PROT bits of each Protection value and the
   alignment mask. */

static struct {
    PyObject *cls, *protection, *sharing, *shared, *bits; /* strong */
    unsigned long long mask;
} aio_map;
static PyObject *str_value_;

/* aio_configure_map(cls, Protection, Sharing, SHARED, prot_bits (8 ints), mask) */
static PyObject *
aio_configure_map(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6 || !PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2]) ||
        !PyTuple_Check(args[4]) || PyTuple_GET_SIZE(args[4]) != 8 || !PyLong_Check(args[5]))
        return PyErr_Format(PyExc_TypeError,
                            "aio_configure_map(cls, Protection, Sharing, SHARED, bits, mask)");
    unsigned long long mask = PyLong_AsUnsignedLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (str_value_ == NULL && (str_value_ = PyUnicode_InternFromString("_value_")) == NULL)
        return NULL;
    Py_XSETREF(aio_map.cls, Py_NewRef(args[0]));
    Py_XSETREF(aio_map.protection, Py_NewRef(args[1]));
    Py_XSETREF(aio_map.sharing, Py_NewRef(args[2]));
    Py_XSETREF(aio_map.shared, Py_NewRef(args[3]));
    Py_XSETREF(aio_map.bits, Py_NewRef(args[4]));
    aio_map.mask = mask;
    Py_RETURN_NONE;
}

/* _fd_plan's checks: 1 (*bits, *kind set), 0: not plain (the Python path reports or coerces),
   -1: an exception. a: file, offset, length, file_offset, protection, sharing. */
static int
aio_fd_plain(Core *c, PyObject *const *a, PyObject **bits, int *kind)
{
    if (aio_map.cls == NULL || c->closed || !PyLong_CheckExact(a[0]) || !PyLong_CheckExact(a[1]) ||
        !PyLong_CheckExact(a[2]) || !PyLong_CheckExact(a[3]) ||
        !Py_IS_TYPE(a[4], (PyTypeObject *)aio_map.protection) ||
        !Py_IS_TYPE(a[5], (PyTypeObject *)aio_map.sharing))
        return 0;
    int over;
    long long fd = PyLong_AsLongLongAndOverflow(a[0], &over);
    if (over || fd < 0 || fd > INT_MAX)
        return 0;
    (void)PyLong_AsLongLongAndOverflow(a[1], &over); /* the offset: any int64 */
    if (over)
        return 0;
    long long n = PyLong_AsLongLongAndOverflow(a[2], &over);
    if (over || n <= 0 || ((unsigned long long)n & aio_map.mask))
        return 0;
    long long fo = PyLong_AsLongLongAndOverflow(a[3], &over);
    if (over || fo < 0 || ((unsigned long long)fo & aio_map.mask))
        return 0;
    if (PyErr_Occurred())
        return -1;
    PyObject *v = PyObject_GetAttr(a[4], str_value_);
    if (v == NULL)
        return -1;
    long p = PyLong_AsLong(v);
    Py_DECREF(v);
    if (p < 0 || p > 7)
        return PyErr_Occurred() ? -1 : 0;
    *bits = PyTuple_GET_ITEM(aio_map.bits, p);
    *kind = a[5] == aio_map.shared ? 0 : 1; /* FILE_SHARED, FILE_PRIVATE */
    return 1;
}

/* aio_map_fd(core, file, offset, length, file_offset, protection, sharing) -> the map job
   begun (its outcome as _map_job's with check_fd), a code (nothing began), or None: the
   Python path (arguments not plain, no task the prologue knows, a cancellation due). */
static PyObject *
aio_map_fd(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7 || !PyObject_TypeCheck(args[0], &CoreType) || aio.get_loop == NULL)
        return PyErr_Format(PyExc_TypeError, "aio_map_fd(core, file, offset, length, "
                                             "file_offset, protection, sharing)");
    Core *c = (Core *)args[0];
    PyObject *const *a = args + 1, *bits;
    int kind;
    int plain = aio_fd_plain(c, a, &bits, &kind);
    if (plain <= 0) {
        if (plain < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    PyObject *loop, *task, *port;
    int r = aio_prologue(0, &loop, &task, &port);
    if (r <= 0) {
        if (r < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    /* _map_job(port, waiter, cls, offset, length, bits, kind, fd, file_offset, dev,
       protection, sharing, file, check_fd, owned) */
    PyObject *full[15] = {port,         loop,   aio_map.cls, a[1], a[2],   bits,
                          small_ints[kind], a[0], a[3], small_ints[0], a[4], a[5],
                          a[0],         Py_True, Py_None};
    return aio_begun(core_map_job(c, full, 15), loop, task, port);
}
