/* _core_state.h: The objects' state (MapObj, Core), the index of mappings and claims, the phase-
 * fair gate, the codes returned to Python. Part of _core.c (included once, in order: one
 * translation unit, every function static).
 */

/* ============================================================================= gate ==== */

/* Tickets: a thread that waits for admission on behalf of an async caller carries one (set
   by the worker around the call); Ticket.abandon() (the caller was cancelled) wakes it and
   the wait backs out: the operation did not start. */
typedef struct Core Core;

typedef struct {
    PyObject_HEAD
    int abandoned;
    Core *waiting_on; /* borrowed: set only while its thread sleeps in that core's gate */
} Ticket;

static PyObject *AbandonedError;
static __thread PyObject *current_ticket;

/* =========================================================================== state ==== */

enum { ST_OPEN = 0, ST_UNMAPPING = 1, ST_CLOSED = 2, ST_NEW = 3 };
enum { E_MAPPED = 0, E_CLAIM = 1, E_HOLE = 2 };
enum { GRAN_BYTE = 0, GRAN_CACHE_LINE = 1, GRAN_PAGE = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *weakreflist;
    PyObject *facade;
    PyObject *rsv;
    PyObject *views; /* weak references to every window over this memory */
    PyObject *file;
    PyObject *protection;
    PyObject *sharing;
    unsigned long long addr, size, span, file_offset;
    int state;
    int gran;
    int bits; /* PROT_* of the mapping */
    long pins; /* memory operations (persist, copies...) in flight */
    int changing; /* a protect, lock or unlock is in flight */
    int locked;   /* mlock()ed by lock() */
} MapObj;

typedef struct {
    uint64_t start, end;
    MapObj *m; /* strong reference for E_MAPPED, NULL otherwise */
    int kind;
} Entry;

struct Core {
    PyObject_HEAD
    PyObject *weakreflist;
    PyObject *facade;
    unsigned long long address, size, max_size;
    int closed;
    /* gate (phase-fair; see _core/_gate.py for the policy) */
    long shared, waiting, queued, sleepers;
    int exclusive;
    unsigned long long phase;
    unsigned long long excl_done, shared_admitted;
    long long over_shared, over_excl, shared_waits, excl_waits;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long long gen;
    /* index: sorted by start, disjoint (see "index") */
    struct Bucket **bk;
    Py_ssize_t nb, bcap;
    struct Bucket *free_list;
    Py_ssize_t nfree;
    Py_ssize_t n, nholes, nmapped;
    /* bumped by every change a view depends on */
    unsigned long long version;
};

static PyTypeObject CoreType;
static PyTypeObject MapType;

/* -- index --------------------------------------------------------------------------------- */

/* Sorted buckets of at most BUCKET entries each, and a sorted array of the buckets: a lookup is
   two binary searches, an insert or a removal moves at most one bucket's entries (and, when a
   bucket splits or empties, the bucket pointers). A position is (bucket, index). Buckets come
   from a free list filled before a transition starts, so an insert never allocates. */
#define BUCKET 256

typedef struct Bucket {
    Py_ssize_t n;
    struct Bucket *next_free;
    Entry e[BUCKET];
} Bucket;

typedef struct {
    Py_ssize_t b, i;
} Pos;

#define ENTRY(c, p) (&(c)->bk[(p).b]->e[(p).i])

static int
pos_valid(Core *c, Pos p)
{
    return p.b < c->nb;
}

static void
pos_next(Core *c, Pos *p)
{
    if (++p->i >= c->bk[p->b]->n) {
        p->b++;
        p->i = 0;
    }
}

/* Back one entry; b becomes -1 before the first. */
static void
pos_prev(Core *c, Pos *p)
{
    if (p->i > 0)
        p->i--;
    else if (--p->b >= 0)
        p->i = c->bk[p->b]->n - 1;
}

static Pos
pos_first(void)
{
    Pos p = {0, 0};
    return p;
}

/* Position of the first entry whose end is > x (invalid if none). */
static Pos
first_ending_after(Core *c, uint64_t x)
{
    Py_ssize_t lo = 0, hi = c->nb;
    while (lo < hi) { /* first bucket whose last entry ends after x */
        Py_ssize_t mid = (lo + hi) / 2;
        Bucket *k = c->bk[mid];
        if (k->e[k->n - 1].end > x)
            hi = mid;
        else
            lo = mid + 1;
    }
    Pos p = {lo, 0};
    if (lo == c->nb)
        return p;
    Bucket *k = c->bk[lo];
    Py_ssize_t l = 0, h = k->n - 1;
    while (l < h) {
        Py_ssize_t mid = (l + h) / 2;
        if (k->e[mid].end > x)
            h = mid;
        else
            l = mid + 1;
    }
    p.i = l;
    return p;
}

/* The entry starting exactly at x, or NULL (then *pos is undefined). */
static Entry *
entry_at(Core *c, uint64_t x, Pos *pos)
{
    Pos p = first_ending_after(c, x);
    if (!pos_valid(c, p) || ENTRY(c, p)->start != x)
        return NULL;
    if (pos != NULL)
        *pos = p;
    return ENTRY(c, p);
}

static int
overlaps(Core *c, uint64_t lo, uint64_t hi)
{
    Pos p = first_ending_after(c, lo);
    return pos_valid(c, p) && ENTRY(c, p)->start < hi;
}

/* Make `k` more inserts possible without allocating (PyMem_Raw: no collection). */
static int
index_reserve_n(Core *c, Py_ssize_t k)
{
    while (c->nfree < k) {
        Bucket *f = PyMem_RawMalloc(sizeof(Bucket));
        if (f == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        f->next_free = c->free_list;
        c->free_list = f;
        c->nfree++;
    }
    if (c->nb + k > c->bcap) {
        Py_ssize_t cap = c->bcap ? c->bcap : 8;
        while (cap < c->nb + k)
            cap *= 2;
        Bucket **bk = PyMem_RawRealloc(c->bk, (size_t)cap * sizeof(Bucket *));
        if (bk == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        c->bk = bk;
        c->bcap = cap;
    }
    return 0;
}

static int
index_reserve(Core *c)
{
    return index_reserve_n(c, 1);
}

static Bucket *
take_free(Core *c)
{
    Bucket *f = c->free_list;
    c->free_list = f->next_free;
    c->nfree--;
    f->n = 0;
    return f;
}

static void
give_free(Core *c, Bucket *f)
{
    if (c->nfree >= 2) { /* keep a couple for the next transitions */
        PyMem_RawFree(f);
        return;
    }
    f->next_free = c->free_list;
    c->free_list = f;
    c->nfree++;
}

static void
insert_bucket(Core *c, Py_ssize_t at_b, Bucket *k)
{
    memmove(&c->bk[at_b + 1], &c->bk[at_b], (size_t)(c->nb - at_b) * sizeof(Bucket *));
    c->bk[at_b] = k;
    c->nb++;
}

/* Insert at its place; room must be reserved (index_reserve) and the range free. */
static void
index_insert(Core *c, uint64_t lo, uint64_t hi, MapObj *m, int kind)
{
    Pos p = first_ending_after(c, lo);
    if (c->nb == 0) {
        insert_bucket(c, 0, take_free(c));
        p.b = p.i = 0;
    }
    else if (p.b == c->nb) { /* after every entry: at the end of the last bucket */
        p.b = c->nb - 1;
        p.i = c->bk[p.b]->n;
    }
    Bucket *k = c->bk[p.b];
    if (k->n == BUCKET) { /* split: the upper half goes to a new bucket after it */
        Bucket *upper = take_free(c);
        Py_ssize_t half = BUCKET / 2;
        memcpy(upper->e, &k->e[half], (size_t)(BUCKET - half) * sizeof(Entry));
        upper->n = BUCKET - half;
        k->n = half;
        insert_bucket(c, p.b + 1, upper);
        if (p.i > half) {
            p.b++;
            p.i -= half;
            k = upper;
        }
    }
    memmove(&k->e[p.i + 1], &k->e[p.i], (size_t)(k->n - p.i) * sizeof(Entry));
    k->e[p.i].start = lo;
    k->e[p.i].end = hi;
    k->e[p.i].m = m;
    k->e[p.i].kind = kind;
    k->n++;
    c->n++;
    if (kind == E_HOLE)
        c->nholes++;
    c->version++; /* positions after it moved: a view being made must look again */
}

/* Remove the entry at p; returns its mapping reference (to be released once the state is
   whole). Never allocates. */
static MapObj *
index_remove_at(Core *c, Pos p)
{
    Bucket *k = c->bk[p.b];
    MapObj *m = k->e[p.i].m;
    if (k->e[p.i].kind == E_HOLE)
        c->nholes--;
    memmove(&k->e[p.i], &k->e[p.i + 1], (size_t)(k->n - p.i - 1) * sizeof(Entry));
    k->n--;
    c->n--;
    c->version++;
    if (k->n == 0) {
        memmove(&c->bk[p.b], &c->bk[p.b + 1], (size_t)(c->nb - p.b - 1) * sizeof(Bucket *));
        c->nb--;
        give_free(c, k);
    }
    return m;
}

/* Every entry, in order: for (Pos p = pos_first(); pos_valid(c, p); pos_next(c, &p)) */
#define FOR_EACH(c, p) for (Pos p = pos_first(); pos_valid((c), p); pos_next((c), &p))

/* -- gate ---------------------------------------------------------------------------------- */

static void
gate_wake(Core *c)
{
    if (c->sleepers) {
        pthread_mutex_lock(&c->mu);
        c->gen++;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
}

/* Sleep until some state changes (or 50 ms pass, to take signals). -1 with an exception set
   if this thread's caller was cancelled (Abandoned) or a signal handler raised. */
static int
gate_wait(Core *c)
{
    Ticket *t = (Ticket *)current_ticket;
    if (t != NULL && t->abandoned) {
        PyErr_SetString(AbandonedError,
                        "the caller was cancelled while the operation waited its turn");
        return -1;
    }
    unsigned long long g = c->gen;
    c->sleepers++;
    if (t != NULL)
        t->waiting_on = c;
    Py_BEGIN_ALLOW_THREADS
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->mu);
    while (c->gen == g) {
        if (pthread_cond_timedwait(&c->cv, &c->mu, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&c->mu);
    Py_END_ALLOW_THREADS
    c->sleepers--;
    if (t != NULL) {
        t->waiting_on = NULL;
        if (t->abandoned) {
            PyErr_SetString(AbandonedError,
                            "the caller was cancelled while the operation waited its turn");
            return -1;
        }
    }
    return PyErr_CheckSignals();
}

static void
admit_queued(Core *c)
{
    if (c->queued) {
        c->shared += c->queued;
        c->shared_admitted += (unsigned long long)c->queued;
        c->queued = 0;
        c->phase++;
        gate_wake(c);
    }
}

static int
try_enter_shared(Core *c)
{
    if (c->exclusive || c->waiting)
        return 0;
    c->shared++;
    c->shared_admitted++;
    return 1;
}

static void
leave_shared(Core *c)
{
    c->shared--;
    if (!c->shared)
        gate_wake(c);
}

/* For an operation another may wait on (an unmap or a persist of a mapping). */
static void
leave_shared_waking(Core *c)
{
    c->shared--;
    gate_wake(c);
}

static int
enter_shared(Core *c)
{
    if (try_enter_shared(c))
        return 0;
    unsigned long long phase = c->phase, start = c->excl_done;
    c->queued++;
    while (c->phase == phase) {
        if (gate_wait(c) < 0) {
            if (c->phase == phase)
                c->queued--;
            else /* admitted meanwhile: give the place back */
                leave_shared(c);
            return -1;
        }
    }
    long long over = (long long)(c->excl_done - start);
    c->shared_waits++;
    if (over > c->over_shared)
        c->over_shared = over;
    return 0;
}

static int
enter_exclusive(Core *c)
{
    int waited = c->exclusive || c->shared;
    unsigned long long start = c->shared_admitted;
    c->waiting++;
    while (c->exclusive || c->shared) {
        if (gate_wait(c) < 0) {
            c->waiting--;
            if (!c->waiting && !c->exclusive)
                admit_queued(c);
            return -1;
        }
    }
    c->waiting--;
    c->exclusive = 1;
    if (waited) {
        c->excl_waits++;
        long long over = (long long)(c->shared_admitted - start);
        if (over > c->over_excl)
            c->over_excl = over;
    }
    return 0;
}

static void
leave_exclusive(Core *c)
{
    c->exclusive = 0;
    c->excl_done++;
    if (c->queued)
        admit_queued(c);
    else
        gate_wake(c);
}

/* Admission of an exclusive operation: 1 admitted, 0 the reservation is closed, -1 error. */
static int
admit_exclusive(Core *c)
{
    if (c->closed)
        return 0;
    if (enter_exclusive(c) < 0)
        return -1;
    if (c->closed) {
        leave_exclusive(c);
        return 0;
    }
    return 1;
}

/* Codes returned to Python, which raises the documented exception for each. */
enum {
    C_CLOSED = -1,
    C_OFF_UNALIGNED = -2,
    C_OFF_NEGATIVE = -3,
    C_NO_FIT = -4,
    C_EXISTS = -5,
    C_MID = -7,
    C_WHOLE = -8,
    C_OFF_RANGE = -9,
    C_LEN_NONPOS = -10,
    C_LEN_PAST = -11,
    C_NOT_EMPTY = -12,
    C_PAST_ASPACE = -13,
    C_EXTEND_EXISTS = -14,
    C_HOLE_NOTED = -20,   /* succeeded (or failed with HOLE_BIT), but left a hole: warn */
    C_FILE = -30,         /* a job's descriptor check refused (its fdcheck result says why) */
    C_WOULD_BLOCK = -31,  /* not begun: the gate would make it wait (the caller goes slow) */
    C_NOACCESS = -32,     /* a memory operation's range lacks the access it needs */
    C_BUSY_BASE = -1000, /* -1000 - n: n views alive */
};
#define HOLE_BIT (1 << 24)

/* Copy the holes' ranges, in order, into `holes` (room for c->nholes); returns how many. */
static Py_ssize_t
copy_holes(Core *c, uint64_t (*holes)[2])
{
    Py_ssize_t nh = 0;
    FOR_EACH(c, p) {
        Entry *e = ENTRY(c, p);
        if (e->kind == E_HOLE) {
            holes[nh][0] = e->start;
            holes[nh][1] = e->end;
            nh++;
        }
    }
    return nh;
}

/* Re-take every hole (exclusive admission held; GIL released around the syscalls). */
static void
repair_holes(Core *c)
{
    if (!c->nholes)
        return;
    Py_ssize_t nh = 0;
    uint64_t (*holes)[2] = PyMem_RawMalloc((size_t)c->nholes * sizeof *holes);
    if (holes == NULL)
        return; /* repaired next time */
    nh = copy_holes(c, holes);
    int *ok = PyMem_RawCalloc((size_t)nh, sizeof(int));
    if (ok == NULL) {
        PyMem_RawFree(holes);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < nh; k++)
        ok[k] = fill_hole(holes[k][0], holes[k][1] - holes[k][0]) == 0;
    Py_END_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < nh; k++) {
        if (ok[k]) {
            Pos p;
            Entry *e = entry_at(c, holes[k][0], &p);
            if (e != NULL && e->kind == E_HOLE)
                index_remove_at(c, p);
        }
    }
    c->version++;
    PyMem_RawFree(ok);
    PyMem_RawFree(holes);
}

static Py_ssize_t
live_of(MapObj *m)
{
    return prune(m->views);
}

/* 0 when no view of `m` is alive; 1 when some are (*code: the busy code saying how many);
   -1 with an exception. */
static int
views_alive(MapObj *m, long *code)
{
    Py_ssize_t alive = live_of(m);
    if (alive < 0)
        return -1;
    if (alive == 0)
        return 0;
    *code = C_BUSY_BASE - alive;
    return 1;
}

/* -- owned descriptors --------------------------------------------------------------------- */

/* A descriptor the library opened (map_file of a path): closed when the object dies, so that
   no interruption between the open and the close can leak it. */
typedef struct {
    PyObject_HEAD
    int fd;
} OwnedFd;

static void
owned_close_fd(OwnedFd *o)
{
    int fd = o->fd;
    if (fd >= 0) {
        o->fd = -1;
        close(fd); /* on Linux the descriptor is released even when close reports EINTR */
    }
}

static PyTypeObject OwnedFdType;
