/* _core_memops.h: Memory operations: persist, populate, advise, lock, unlock, protect and the
 * copies (MemJob). Part of _core.c (included once, in order: one translation unit, every
 * function static).
 */

/* -- memory operations --------------------------------------------------------------------- */

/* persist, populate, advise, lock, unlock, protect and the copies (write, read) of a mapping or
   of a range of the reservation across mappings back to back. Each is begun under the GIL
   (admission shared, the checks, the pins), runs its syscalls or its copy without the GIL, and
   is committed under the GIL (pins dropped, the mapping's attributes updated). A pinned
   mapping stays mapped: unmap() waits for its pins, close() and shrink() for the gate. */

enum {
    MEM_PERSIST = 0,
    MEM_POPULATE = 1,
    MEM_ADVISE = 2,
    MEM_LOCK = 3,
    MEM_UNLOCK = 4,
    MEM_PROTECT = 5,
    MEM_WRITE = 6,
    MEM_READ = 7,
    MEM_KINDS = 8,
};
/* The kinds that change an attribute of their mapping: one at a time per mapping, and the
   mapping's unmap waits for them. */
#define MEM_CHANGES(k) ((k) == MEM_LOCK || (k) == MEM_UNLOCK || (k) == MEM_PROTECT)
#define MEM_COPIES(k) ((k) == MEM_WRITE || (k) == MEM_READ)

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLD
#define MADV_COLD 20
#endif
#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT 21
#endif

typedef struct {
    MapObj *m; /* borrowed: pinned, so it stays in the index (which holds it) */
    uint64_t lo, hi; /* absolute bytes of this mapping in the range */
    int write; /* populate: fault for writing */
} Piece;

typedef struct {
    int kind, arg, err;
    int old_bits;      /* protect: the access before */
    int torn;          /* protect: refused, and the access before could not be put back */
    PyObject *old_prot, *new_prot; /* protect: strong references, dropped by the commit */
    Py_ssize_t n;
    Piece one;
    Piece *pieces;     /* &one, or PyMem_RawMalloc'd for a range over several mappings */
    uint64_t lo, hi;   /* the whole range (absolute) */
    char *buf;         /* copies: the source (write) or the destination (read) */
    Py_buffer pb;
    int has_pb;
    PyObject *out;     /* read(): the bytes object filled, returned by the commit */
} MemJob;

static uint64_t
align_up(uint64_t x)
{
    return (x + page_mask) & ~page_mask;
}

/* madvise, mprotect, mlock, munlock: 0 or the errno, EINTR retried (none has a partial effect
   when interrupted; MADV_POPULATE_* can be restarted). */
static int
sys_mem(int sc, uint64_t addr, uint64_t length, int arg)
{
    for (;;) {
        int e = inject_check(sc);
        if (e == EINTR)
            continue;
        if (e)
            return e;
        void *p = (void *)(uintptr_t)addr;
        int r;
        if (sc == SC_MADVISE)
            r = madvise(p, (size_t)length, arg);
        else if (sc == SC_MPROTECT)
            r = mprotect(p, (size_t)length, arg);
        else if (sc == SC_MLOCK)
            r = mlock(p, (size_t)length);
        else
            r = munlock(p, (size_t)length);
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return errno;
    }
}

/* Fault every page of [lo, hi) in by touching it: a read, or for writing an atomic add of
   zero (the value is kept even while other threads store to the page). */
static void
touch_pages(uint64_t lo, uint64_t hi, int write)
{
    for (uint64_t a = lo; a < hi; a += page_size) {
        if (write)
            __atomic_fetch_add((unsigned char *)(uintptr_t)a, 0, __ATOMIC_RELAXED);
        else
            (void)*(volatile unsigned char *)(uintptr_t)a;
    }
}

static int
piece_run(MemJob *j, Piece *p)
{
    uint64_t s = align_down(p->lo), e = align_up(p->hi);
    if (e <= s)
        return 0;
    int err;
    switch (j->kind) {
    case MEM_PERSIST:
        return sys_msync(s, e - s, MS_SYNC);
    case MEM_POPULATE:
        err = sys_mem(SC_MADVISE, s, e - s, p->write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
        if (err == EINVAL) { /* a kernel before 5.14: fault the pages in one by one */
            touch_pages(s, e, p->write);
            err = 0;
        }
        return err;
    case MEM_ADVISE:
        return sys_mem(SC_MADVISE, s, e - s, j->arg);
    case MEM_LOCK:
        err = sys_mem(SC_MLOCK, s, e - s, 0);
        if (err) /* a refused mlock may have locked part of the range: nothing stays locked */
            (void)munlock((void *)(uintptr_t)s, (size_t)(e - s));
        return err;
    case MEM_UNLOCK:
        return sys_mem(SC_MUNLOCK, s, e - s, 0);
    case MEM_PROTECT:
        err = sys_mem(SC_MPROTECT, s, e - s, j->arg);
        /* All or nothing: the access before is put back on what may have changed. */
        if (err && mprotect((void *)(uintptr_t)s, (size_t)(e - s), j->old_bits) != 0)
            j->torn = 1; /* pages may have either access: only what both give is safe */
        return err;
    }
    return 0;
}

/* Without the GIL. */
static void
mem_syscalls(MemJob *j)
{
    j->err = 0;
    if (j->kind == MEM_WRITE) {
        memmove((void *)(uintptr_t)j->lo, j->buf, (size_t)(j->hi - j->lo));
        return;
    }
    if (j->kind == MEM_READ) {
        memmove(j->buf, (void *)(uintptr_t)j->lo, (size_t)(j->hi - j->lo));
        return;
    }
    for (Py_ssize_t k = 0; k < j->n && !j->err; k++)
        j->err = piece_run(j, &j->pieces[k]);
}

/* Whether a protect to `bits` takes access away from a mapping that has `now`. */
static int
takes_access(int now, int bits)
{
    return (now & ~bits & (PROT_READ | PROT_WRITE)) != 0;
}

/* The wait of a change (protect, lock, unlock) of `m`: another change in flight, or, for a
   protect taking access away, operations in flight that were admitted with that access. */
static int
change_must_wait(MapObj *m, MemJob *j)
{
    return m->changing || (j->kind == MEM_PROTECT && takes_access(m->bits, j->arg) && m->pins);
}

/* The pieces of [lo, hi) of the reservation for `j` (m == NULL), gate held. Operations that
   need access (`need` != 0) need every byte mapped with it: else C_NOACCESS, and `*where` is
   the absolute address of the first byte missing it. persist takes the open shared file
   mappings and skips the rest. Returns 1 (pieces set), 0 (*code set), -1 (no memory). */
static int
mem_pieces(Core *c, MemJob *j, uint64_t lo, uint64_t hi, int need, long *code, uint64_t *where)
{
    Py_ssize_t count = 0;
    uint64_t pos = lo;
    Pos first = first_ending_after(c, lo);
    for (Pos q = first; pos_valid(c, q) && ENTRY(c, q)->start < hi; pos_next(c, &q)) {
        Entry *e = ENTRY(c, q);
        int open = e->kind == E_MAPPED && e->m->state == ST_OPEN;
        if (need) {
            if (e->start > pos || !open) {
                *where = pos;
                *code = C_NOACCESS;
                return 0;
            }
            if ((e->m->bits & need) != need) {
                *where = pos;
                *code = C_NOACCESS;
                return 0;
            }
            pos = e->end;
            count++;
        }
        else if (open && e->m->gran != GRAN_BYTE)
            count++;
    }
    if (need && pos < hi) {
        *where = pos;
        *code = C_NOACCESS;
        return 0;
    }
    j->n = count;
    if (count == 0)
        return 1;
    if (count == 1)
        j->pieces = &j->one;
    else {
        j->pieces = PyMem_RawMalloc((size_t)count * sizeof(Piece));
        if (j->pieces == NULL) {
            j->n = 0;
            j->pieces = &j->one;
            PyErr_NoMemory();
            return -1;
        }
    }
    Py_ssize_t k = 0;
    for (Pos q = first; k < count; pos_next(c, &q)) {
        Entry *e = ENTRY(c, q);
        if (!need && !(e->kind == E_MAPPED && e->m->state == ST_OPEN && e->m->gran != GRAN_BYTE))
            continue;
        Piece *p = &j->pieces[k++];
        p->m = e->m;
        p->lo = e->start > lo ? e->start : lo;
        p->hi = e->end < hi ? e->end : hi;
        p->write = (e->m->bits & PROT_WRITE) != 0;
    }
    return 1;
}

static void
mem_free_pieces(MemJob *j)
{
    if (j->pieces != NULL && j->pieces != &j->one)
        PyMem_RawFree(j->pieces);
    j->pieces = NULL;
    j->n = 0;
}

/* Admission, the checks and the pins of `j` on the mapping `m`, or on [lo, hi) of the
   reservation when m is NULL (the job's kind, arg, range and buffer are set). 1: begun;
   0: *code is the outcome (C_CLOSED, C_NOACCESS (*where: its first byte), a busy code,
   C_WOULD_BLOCK when not `blocking` and it would wait, 0: nothing to do); -1: exception. */
static int
mem_begin(Core *c, MapObj *m, MemJob *j, int need, int blocking, long *code, uint64_t *where)
{
    *code = 0;
    if (!blocking) {
        if (!try_enter_shared(c)) {
            *code = C_WOULD_BLOCK;
            return 0;
        }
    }
    else if (enter_shared(c) < 0)
        return -1;
    if (m == NULL) {
        if (c->closed) {
            leave_shared(c);
            *code = C_CLOSED;
            return 0;
        }
        int r = mem_pieces(c, j, j->lo, j->hi, need, code, where);
        if (r <= 0) {
            leave_shared(c);
            return r;
        }
        if (j->n == 0 && !MEM_COPIES(j->kind)) { /* nothing to do in the range */
            leave_shared(c);
            return 0;
        }
    }
    else {
        while (m->state == ST_OPEN && MEM_CHANGES(j->kind) && change_must_wait(m, j)) {
            if (!blocking) {
                leave_shared(c);
                *code = C_WOULD_BLOCK;
                return 0;
            }
            if (gate_wait(c) < 0) {
                leave_shared_waking(c);
                return -1;
            }
        }
        if (m->state != ST_OPEN) {
            leave_shared(c);
            *code = C_CLOSED;
            return 0;
        }
        if ((m->bits & need) != need) {
            leave_shared(c);
            *where = j->lo;
            *code = C_NOACCESS;
            return 0;
        }
        if (j->kind == MEM_PROTECT && takes_access(m->bits, j->arg)) {
            int busy = views_alive(m, code);
            if (busy) {
                leave_shared(c);
                return busy < 0 ? -1 : 0;
            }
        }
        if ((j->kind == MEM_LOCK && m->locked) || (j->kind == MEM_UNLOCK && !m->locked)) {
            leave_shared(c);
            return 0; /* already so */
        }
        j->n = 1;
        j->pieces = &j->one;
        j->one.m = m;
        j->one.lo = j->lo;
        j->one.hi = j->hi;
        j->one.write = (m->bits & PROT_WRITE) != 0;
        if (MEM_CHANGES(j->kind))
            m->changing = 1;
        if (j->kind == MEM_PROTECT) {
            /* Until it is done, new views and operations get only the access both the old
               and the new protection give. */
            j->old_bits = m->bits;
            m->bits &= j->arg;
            PyObject *both = PyTuple_GET_ITEM(PyTuple_GET_ITEM(j->new_prot, 1), m->bits & 7);
            PyObject *newp = PyTuple_GET_ITEM(j->new_prot, 0);
            j->old_prot = m->protection;
            m->protection = Py_NewRef(both);
            Py_SETREF(j->new_prot, Py_NewRef(newp));
            c->version++;
        }
    }
    for (Py_ssize_t k = 0; k < j->n; k++)
        j->pieces[k].m->pins++;
    j->err = 0;
    return 1;
}

/* Under the GIL; no Python code runs (the references dropped are enum members; the caller's
   buffer is released by mem_discard, outside the commit: that can run code). Returns the
   outcome: 0 (or read()'s bytes) or the errno of a refusal. */
static PyObject *
mem_commit(Core *c, MemJob *j)
{
    for (Py_ssize_t k = 0; k < j->n; k++) {
        MapObj *m = j->pieces[k].m;
        m->pins--;
        if (MEM_CHANGES(j->kind)) {
            m->changing = 0;
            if (!j->err && j->kind != MEM_PROTECT)
                m->locked = j->kind == MEM_LOCK;
        }
        if (j->kind == MEM_PROTECT && !j->torn) {
            PyObject *prot = j->err ? j->old_prot : j->new_prot;
            m->bits = j->err ? j->old_bits : j->arg;
            Py_SETREF(m->protection, Py_NewRef(prot));
            c->version++;
        }
        /* (torn: the access both give, set by the begin, stays.) */
    }
    Py_CLEAR(j->old_prot); /* enum members: never freed here */
    Py_CLEAR(j->new_prot);
    mem_free_pieces(j);
    leave_shared_waking(c); /* an unmap or a change may wait for the pins */
    if (j->err || j->kind != MEM_READ || j->out == NULL)
        return PyLong_FromLong(j->err);
    return Py_NewRef(j->out);
}

/* Drop what a job holds: one that did not begin, or one committed (its buffer). */
static void
mem_discard(MemJob *j)
{
    Py_CLEAR(j->new_prot);
    Py_CLEAR(j->old_prot);
    if (j->has_pb) {
        PyBuffer_Release(&j->pb);
        j->has_pb = 0;
    }
    mem_free_pieces(j);
    Py_CLEAR(j->out);
}

/* The arguments (kind, arg, m or None, lo, hi, need, obj) of _mem and _mem_job into `j`.
   obj: write: the source (a buffer of hi - lo bytes); read: the destination (a writable
   buffer), or None (a new bytes object); protect: (the new protection, the 8 protections
   by PROT_* bits). */
static int
mem_prepare(Core *c, PyObject *const *args, MemJob *j, MapObj **m, int *need)
{
    memset(j, 0, sizeof *j);
    j->kind = as_c_int(args[0]);
    j->arg = as_c_int(args[1]);
    j->lo = PyLong_AsUnsignedLongLong(args[3]);
    j->hi = PyLong_AsUnsignedLongLong(args[4]);
    *need = as_c_int(args[5]);
    if (PyErr_Occurred())
        return -1;
    if (j->kind < 0 || j->kind >= MEM_KINDS || j->hi < j->lo) {
        PyErr_SetString(PyExc_ValueError, "_mem: bad arguments");
        return -1;
    }
    *m = NULL;
    if (args[2] != Py_None) {
        *m = as_mapping(c, args[2]);
        if (*m == NULL)
            return -1;
        if (j->lo < (*m)->addr || j->hi > (*m)->addr + (*m)->span) {
            PyErr_SetString(PyExc_ValueError, "_mem: range outside the mapping");
            return -1;
        }
    }
    else if (MEM_CHANGES(j->kind)) {
        PyErr_SetString(PyExc_ValueError, "_mem: a change needs a mapping");
        return -1;
    }
    PyObject *obj = args[6];
    if (j->kind == MEM_PROTECT) {
        if (!PyTuple_CheckExact(obj) || PyTuple_GET_SIZE(obj) != 2 ||
            !PyTuple_CheckExact(PyTuple_GET_ITEM(obj, 1)) ||
            PyTuple_GET_SIZE(PyTuple_GET_ITEM(obj, 1)) != 8) {
            PyErr_SetString(PyExc_TypeError, "_mem: protect takes (protection, table by bits)");
            return -1;
        }
        j->new_prot = Py_NewRef(obj);
    }
    else if (MEM_COPIES(j->kind)) {
        Py_ssize_t n = (Py_ssize_t)(j->hi - j->lo);
        if (j->kind == MEM_READ && obj == Py_None) {
            j->out = PyBytes_FromStringAndSize(NULL, n);
            if (j->out == NULL)
                return -1;
            j->buf = PyBytes_AS_STRING(j->out);
        }
        else {
            int flags = j->kind == MEM_READ ? PyBUF_WRITABLE : PyBUF_SIMPLE;
            if (PyObject_GetBuffer(obj, &j->pb, flags) < 0)
                return -1;
            j->has_pb = 1;
            if (j->pb.len != n) {
                mem_discard(j);
                PyErr_SetString(PyExc_ValueError, "_mem: the buffer's size is not the range's");
                return -1;
            }
            j->buf = j->pb.buf;
        }
    }
    return 0;
}

/* The outcome of a begin that did not begin: the code, or (C_NOACCESS, address). */
static PyObject *
mem_refused(long code, uint64_t where)
{
    if (code == C_NOACCESS)
        return Py_BuildValue("(lK)", code, (unsigned long long)where);
    return PyLong_FromLong(code);
}

/* _mem(kind, arg, m or None, lo, hi, need, obj) -> 0, read()'s bytes, an int code (C_CLOSED, a
   busy code, an errno), or (C_NOACCESS, address of the first byte without the access). */
static PyObject *
core_mem(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7)
        return PyErr_Format(PyExc_TypeError, "_mem(kind, arg, m, lo, hi, need, obj)");
    MemJob j;
    MapObj *m;
    int need;
    if (mem_prepare(c, args, &j, &m, &need) < 0)
        return NULL;
    long code;
    uint64_t where = 0;
    int r = mem_begin(c, m, &j, need, 1, &code, &where);
    if (r <= 0) {
        mem_discard(&j);
        return r < 0 ? NULL : mem_refused(code, where);
    }
    Py_BEGIN_ALLOW_THREADS
    mem_syscalls(&j);
    Py_END_ALLOW_THREADS
    PyObject *result = mem_commit(c, &j);
    mem_discard(&j);
    return result;
}

/* _persist(m, start, end) -> 0, C_CLOSED (the mapping is unmapped), or msync's errno. */
static PyObject *
core_persist(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "_persist(m, start, end)");
    PyObject *full[7] = {NULL, NULL, args[0], args[1], args[2], NULL, Py_None};
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    full[0] = full[1] = full[5] = zero;
    PyObject *r = core_mem(c, full, 7);
    Py_DECREF(zero);
    return r;
}
