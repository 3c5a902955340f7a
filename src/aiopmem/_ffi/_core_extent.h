/* _core_extent.h: reserve, extend, shrink and close of a reservation. Part of _core.c (included once, in
 * order: one translation unit, every function static).
 */

/* -- reserve ------------------------------------------------------------------------------ */

typedef struct {
    int has_addr, has_limit, err;
    uint64_t want_addr, n, limit, headroom, align;
    uint64_t addr, held; /* the outcome */
} ReserveJob;

/* Parse reserve's arguments (cls, address or None, size, max_size or None, headroom,
   alignment (0: the page)) and make the object, closed until the range is held: dropped, it
   releases nothing. A new reference, or NULL. */
static Core *
reserve_prepare(PyObject *const *args, Py_ssize_t nargs, ReserveJob *j)
{
    if (nargs != 6 || !PyType_Check(args[0]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], &CoreType)) {
        PyErr_SetString(PyExc_TypeError, "reserve: bad arguments");
        return NULL;
    }
    memset(j, 0, sizeof *j);
    j->has_addr = args[1] != Py_None;
    j->has_limit = args[3] != Py_None;
    j->want_addr = j->has_addr ? PyLong_AsUnsignedLongLong(args[1]) : 0;
    j->n = PyLong_AsUnsignedLongLong(args[2]);
    j->limit = j->has_limit ? PyLong_AsUnsignedLongLong(args[3]) : 0;
    j->headroom = PyLong_AsUnsignedLongLong(args[4]);
    j->align = PyLong_AsUnsignedLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    PyTypeObject *cls = (PyTypeObject *)args[0];
    Core *c = (Core *)cls->tp_alloc(cls, 0);
    if (c == NULL)
        return NULL;
    c->closed = 1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    return c;
}

/* Without the GIL: take the range (and the headroom). */
static void
reserve_syscalls(ReserveJob *j)
{
    uint64_t addr = 0, held = j->has_limit ? j->limit : j->n;
    int err = 0;
    if (j->has_addr) {
        addr = j->want_addr;
        err = fill_hole(addr, held);
        if (!err && !j->has_limit) {
            uint64_t got = 0;
            err = take_headroom_after(addr + j->n, j->headroom, &got);
            if (err)
                sys_munmap(addr, j->n); /* the headroom's failure is the one to report */
            held += got;
        }
    }
    else if (!j->has_limit)
        err = take_range_with_headroom(j->n, j->headroom, j->align, &addr, &held);
    else
        err = take_range_aligned(held, j->align, &addr);
    j->err = err;
    j->addr = addr;
    j->held = held;
}

/* The reservation (a new reference; it holds the range from now on), or the int code: an
   errno, C_EXISTS when the range asked for is occupied. */
static PyObject *
reserve_commit(Core *c, ReserveJob *j)
{
    if (j->err)
        return PyLong_FromLong(j->err == EEXIST && j->has_addr ? C_EXISTS : j->err);
    c->address = j->addr;
    c->size = j->n;
    c->max_size = j->held;
    c->closed = 0;
    return Py_NewRef((PyObject *)c);
}

/* -- extend / shrink ----------------------------------------------------------------------- */

/* Admission of an extend or shrink that must not wait (the async API on the event loop):
   1 admitted (exclusive), 0 *code set: C_CLOSED, or C_WOULD_BLOCK when anyone holds or waits
   for the gate, or holes wait for repair (syscalls). Never sleeps, never releases the GIL. */
static int
admit_exclusive_nowait(Core *c, long *code)
{
    if (c->closed) {
        *code = C_CLOSED;
        return 0;
    }
    if (c->exclusive || c->shared || c->waiting || c->queued || c->nholes) {
        *code = C_WOULD_BLOCK;
        return 0;
    }
    c->exclusive = 1;
    return 1;
}

/* Extend by n (GIL held): the code (0: done). With `nowait`, C_WOULD_BLOCK instead of waiting
   at the gate or making a syscall (past the headroom); -1 (not a code here) with an exception
   set. */
static long
extend_by(Core *c, uint64_t n, int nowait)
{
    long code = 0;
    if (nowait) {
        if (!admit_exclusive_nowait(c, &code))
            return code;
        if ((u128)c->size + n > c->max_size) {
            c->exclusive = 0; /* nothing happened: no completion to count */
            return C_WOULD_BLOCK;
        }
    }
    else {
        int a = admit_exclusive(c);
        if (a <= 0)
            return a < 0 ? -1 : C_CLOSED;
        repair_holes(c);
    }
    u128 new_size = (u128)c->size + n;
    if ((u128)c->address + new_size > ((u128)1 << 64))
        code = C_PAST_ASPACE;
    else if (new_size > c->max_size) {
        uint64_t end = c->address + c->max_size;
        uint64_t len = (uint64_t)(c->address + new_size - end);
        int e;
        Py_BEGIN_ALLOW_THREADS
        e = fill_hole(end, len);
        Py_END_ALLOW_THREADS
        if (e == EEXIST)
            code = C_EXTEND_EXISTS;
        else if (e)
            code = e;
        else
            c->size = c->max_size = (uint64_t)new_size;
    }
    else
        c->size = (uint64_t)new_size;
    c->version++;
    leave_exclusive(c);
    return code;
}

static PyObject *
code_or_error(long code)
{
    return code == -1 && PyErr_Occurred() ? NULL : PyLong_FromLong(code);
}

static PyObject *
core_extend(Core *c, PyObject *arg)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return code_or_error(extend_by(c, n, 0));
}

/* Whether `o` is a plain int (a subclass, bool included, is not) within int64 and a multiple
   of the page size: the arguments the fast paths take; anything else gets the full checks. */
static int
plain_aligned(PyObject *o, long long *v)
{
    if (!PyLong_CheckExact(o))
        return 0;
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    return !overflow && !(*v & (long long)page_mask);
}

/* _extend_nowait(size) (the async API, on the event loop): the code, C_WOULD_BLOCK also when
   `size` is not a plain positive aligned int (the blocking path then checks it). */
static PyObject *
core_extend_nowait(Core *c, PyObject *arg)
{
    long long n;
    if (!plain_aligned(arg, &n) || n <= 0)
        return PyLong_FromLong(C_WOULD_BLOCK);
    return code_or_error(extend_by(c, (uint64_t)n, 1));
}

/* Shrink [off, off+n) (GIL held): the code (0: done), or -1 with an exception set. With
   `nowait`: C_WOULD_BLOCK instead of waiting at the gate or making a syscall (a front shrink
   returns its pages to the system with munmap). */
static long
shrink_by(Core *c, long long off, long long n, int nowait)
{
    long code = 0;
    if (nowait) {
        if (!admit_exclusive_nowait(c, &code))
            return code;
    }
    else {
        int a = admit_exclusive(c);
        if (a <= 0)
            return a < 0 ? -1 : C_CLOSED;
    }
    uint64_t cur = c->size;
    if (off < 0 || (uint64_t)off >= cur)
        code = C_OFF_RANGE;
    else if (n <= 0)
        code = C_LEN_NONPOS;
    else if ((u128)(uint64_t)off + (uint64_t)n > cur)
        code = C_LEN_PAST;
    else if (off != 0 && (uint64_t)off + (uint64_t)n != cur)
        code = C_MID;
    else if (off == 0 && (uint64_t)n == cur)
        code = C_WHOLE;
    else if (nowait && off == 0) {
        c->exclusive = 0; /* nothing happened: no completion to count */
        return C_WOULD_BLOCK;
    }
    if (!code) {
        if (!nowait)
            repair_holes(c);
        uint64_t lo = c->address + (uint64_t)off;
        if (overlaps(c, lo, lo + (uint64_t)n))
            code = C_NOT_EMPTY;
        else if (off == 0) {
            int e;
            Py_BEGIN_ALLOW_THREADS
            e = sys_munmap(lo, (uint64_t)n);
            Py_END_ALLOW_THREADS
            if (e)
                code = e;
            else {
                c->address += (uint64_t)n;
                c->size -= (uint64_t)n;
                c->max_size -= (uint64_t)n;
            }
        }
        else
            c->size -= (uint64_t)n;
        c->version++;
    }
    leave_exclusive(c);
    return code;
}

/* _shrink(offset, size): offset and size come aligned and within int64 (Python checks). */
static PyObject *
core_shrink(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_shrink(offset, size)");
    long long off = PyLong_AsLongLong(args[0]);
    long long n = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    return code_or_error(shrink_by(c, off, n, 0));
}

/* _shrink_nowait(offset, size) (the async API, on the event loop): the code, C_WOULD_BLOCK
   also when the arguments are not plain aligned ints (the blocking path then checks them). */
static PyObject *
core_shrink_nowait(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    long long off, n;
    if (nargs != 2 || !plain_aligned(args[0], &off) || !plain_aligned(args[1], &n))
        return PyLong_FromLong(C_WOULD_BLOCK);
    return code_or_error(shrink_by(c, off, n, 1));
}

/* -- extend past the headroom, shrink of the front: jobs of the async API ------------------- */

/* The one syscall of an extend past max_size (the placeholder after the end) or of a front
   shrink (the munmap of the head), made by the executor while the job holds the gate
   exclusively. */
typedef struct {
    int shrink, err;
    uint64_t lo, len;  /* the syscall's range */
    uint64_t new_size; /* extend: the size (and max_size) after it */
} ExtentJob;

static void
extent_syscalls(ExtentJob *j)
{
    j->err = j->shrink ? sys_munmap(j->lo, j->len) : fill_hole(j->lo, j->len);
}

/* The code (0: done); the gate is given back. */
static long
extent_commit(Core *c, ExtentJob *j)
{
    long code = 0;
    if (j->shrink) {
        if (j->err)
            code = j->err;
        else {
            c->address += j->len;
            c->size -= j->len;
            c->max_size -= j->len;
        }
    }
    else if (j->err)
        code = j->err == EEXIST ? C_EXTEND_EXISTS : j->err;
    else
        c->size = c->max_size = j->new_size;
    c->version++;
    leave_exclusive(c);
    return code;
}

/* The begin of an extend job (size: plain aligned int): 1 begun (exclusive held, `j` set);
   0 *code: the outcome when no syscall was needed (done inline) or the refusal, C_WOULD_BLOCK
   when the gate is busy, holes wait for repair, or `size` needs the full checks. */
static int
extend_begin(Core *c, PyObject *size, ExtentJob *j, long *code)
{
    long long n;
    memset(j, 0, sizeof *j);
    *code = 0;
    if (!plain_aligned(size, &n) || n <= 0) {
        *code = C_WOULD_BLOCK;
        return 0;
    }
    if (!admit_exclusive_nowait(c, code))
        return 0;
    u128 new_size = (u128)c->size + (uint64_t)n;
    if ((u128)c->address + new_size > ((u128)1 << 64) || new_size <= c->max_size) {
        c->exclusive = 0; /* nothing happened yet: the inline path does it */
        *code = C_WOULD_BLOCK;
        return 0;
    }
    j->lo = c->address + c->max_size;
    j->len = (uint64_t)(c->address + new_size - j->lo);
    j->new_size = (uint64_t)new_size;
    return 1;
}

/* The begin of a front shrink job: as extend_begin; every check of shrink_by is made here
   (C_WOULD_BLOCK for anything but a front shrink that passes them). */
static int
shrink_begin(Core *c, PyObject *offset, PyObject *size, ExtentJob *j, long *code)
{
    long long off, n;
    memset(j, 0, sizeof *j);
    *code = 0;
    if (!plain_aligned(offset, &off) || !plain_aligned(size, &n) || off != 0 || n <= 0) {
        *code = C_WOULD_BLOCK;
        return 0;
    }
    if (!admit_exclusive_nowait(c, code))
        return 0;
    if ((uint64_t)n >= c->size || overlaps(c, c->address, c->address + (uint64_t)n)) {
        c->exclusive = 0; /* refused: the inline path reports it */
        *code = C_WOULD_BLOCK;
        return 0;
    }
    j->shrink = 1;
    j->lo = c->address;
    j->len = (uint64_t)n;
    return 1;
}

#define EXTEND_DOC \
    "extend($self, /, size)\n" \
    "--\n" \
    "\n" \
    "Grow the reservation at its end by ``size`` bytes; mappings and address stay put.\n" \
    "\n" \
    "Up to ``max_size`` this cannot fail for lack of room. Past it, the space right after the\n" \
    "reservation is taken if free, and ``max_size`` becomes the new size.\n" \
    "\n" \
    "Raises:\n" \
    "    TypeError: size is not an integer.\n" \
    "    ClosedError: the reservation is closed.\n" \
    "    LengthUnalignedError: size is not a multiple of ALIGNMENT.\n" \
    "    LengthOutOfRangeError: size is negative, or the result would pass the end of the\n" \
    "        address space.\n" \
    "    MappingExistsError: the range after the end (past ``max_size``) is occupied.\n" \
    "    OSError: the kernel refused (ENOMEM, EAGAIN); nothing is changed.\n"

#define SHRINK_DOC \
    "shrink($self, /, offset, size)\n" \
    "--\n" \
    "\n" \
    "Remove ``[offset, offset+size)``, which must touch the beginning or the end of the\n" \
    "reservation and hold no mapping.\n" \
    "\n" \
    "A removed head is returned to the system: ``address`` moves up by ``size``, ``max_size``\n" \
    "drops by ``size``, and every mapping's ``offset`` drops by ``size`` (mappings never\n" \
    "move). A removed tail stays reserved as headroom: ``max_size`` is unchanged and\n" \
    "``extend()`` can grow back into it.\n" \
    "\n" \
    "Raises (checked in this order, libpmem2's):\n" \
    "    TypeError: an argument is not an integer.\n" \
    "    ClosedError: the reservation is closed.\n" \
    "    OffsetUnalignedError: offset unaligned.\n" \
    "    LengthUnalignedError: size unaligned.\n" \
    "    OffsetOutOfRangeError: ``offset < 0`` or ``offset >= self.size``.\n" \
    "    LengthOutOfRangeError: ``size <= 0``.\n" \
    "    LengthOutOfRangeError: ``offset + size > self.size``.\n" \
    "    NotSupportedError: the region is in the middle, or is the whole reservation.\n" \
    "    ReservationNotEmptyError: the region holds (part of) a mapping.\n" \
    "    OSError: the kernel refused to release the head; nothing is changed.\n"

/* The public extend(size) and shrink(offset, size) of aiopmem.sync: plain aligned ints on an
   open reservation go straight to the transition; any other call (another type, a keyword,
   an error to report) goes to the Python methods, which check, call and raise as documented
   (_extend_checked/_shrink_checked; _extend_failed/_shrink_failed for a refused transition:
   it is never attempted twice). */
static PyObject *str_extend_checked, *str_extend_failed, *str_shrink_checked, *str_shrink_failed;

static PyObject *
delegate(Core *c, PyObject *name, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *meth = PyObject_GetAttr((PyObject *)c, name);
    if (meth == NULL)
        return NULL;
    PyObject *r = PyObject_Vectorcall(meth, args, nargsf, kwnames);
    Py_DECREF(meth);
    return r;
}

static PyObject *
refused(Core *c, PyObject *name, long code, PyObject *const *args, Py_ssize_t n)
{
    if (code == -1 && PyErr_Occurred())
        return NULL;
    PyObject *k = PyLong_FromLong(code);
    if (k == NULL)
        return NULL;
    PyObject *argv[4] = {(PyObject *)c, args[0], n > 1 ? args[1] : k, k};
    PyObject *r = PyObject_VectorcallMethod(name, argv, (size_t)(n + 2), NULL);
    Py_DECREF(k);
    return r;
}

static PyObject *
core_extend_public(Core *c, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    long long n;
    if (nargs == 1 && kwnames == NULL && !c->closed && plain_aligned(args[0], &n) && n > 0) {
        long code = extend_by(c, (uint64_t)n, 0);
        if (code == 0)
            Py_RETURN_NONE;
        return refused(c, str_extend_failed, code, args, 1);
    }
    return delegate(c, str_extend_checked, args, nargsf, kwnames);
}

static PyObject *
core_shrink_public(Core *c, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    long long off, n;
    if (nargs == 2 && kwnames == NULL && !c->closed && plain_aligned(args[0], &off) &&
        plain_aligned(args[1], &n)) {
        long code = shrink_by(c, off, n, 0);
        if (code == 0)
            Py_RETURN_NONE;
        return refused(c, str_shrink_failed, code, args, 2);
    }
    return delegate(c, str_shrink_checked, args, nargsf, kwnames);
}

/* -- close --------------------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t np, done, nd;
    uint64_t (*pieces)[2]; /* the ranges to release: everything but the holes */
    MapObj **drop;         /* the references the index gave up, dropped after the commit */
    int err;
} CloseJob;

/* Admission (exclusive), the check for live views, and every allocation the transition needs
   (the pieces to release, the references to drop, room for the holes a failure would leave);
   then the mappings are marked closed: no new view while the memory goes away. 1: begun;
   0: *code is the outcome (0: closed already, a busy code, C_WOULD_BLOCK when not `blocking`
   and it would wait or holes need repair); -1: exception. */
static int
close_begin(Core *c, CloseJob *j, int blocking, long *code)
{
    memset(j, 0, sizeof *j);
    *code = 0;
    if (blocking) {
        int a = admit_exclusive(c);
        if (a <= 0)
            return a < 0 ? -1 : 0;
        repair_holes(c);
    }
    else if (!admit_exclusive_nowait(c, code)) {
        if (*code == C_CLOSED)
            *code = 0;
        return 0;
    }
    Py_ssize_t alive = 0;
    FOR_EACH(c, p) {
        Entry *e = ENTRY(c, p);
        if (e->kind == E_MAPPED) {
            Py_ssize_t k = live_of(e->m);
            if (k < 0) {
                leave_exclusive(c);
                return -1;
            }
            alive += k;
        }
    }
    if (alive) {
        leave_exclusive(c);
        *code = C_BUSY_BASE - alive;
        return 0;
    }
    j->pieces = PyMem_RawMalloc((size_t)(c->nholes + 1) * sizeof *j->pieces);
    j->drop = PyMem_RawMalloc((size_t)(c->n + 1) * sizeof(MapObj *));
    if (j->pieces == NULL || j->drop == NULL || index_reserve_n(c, c->nholes + 1) < 0) {
        PyMem_RawFree(j->pieces);
        PyMem_RawFree(j->drop);
        j->pieces = NULL;
        j->drop = NULL;
        leave_exclusive(c);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    uint64_t pos = c->address, end = c->address + c->max_size;
    FOR_EACH(c, p) {
        Entry *e = ENTRY(c, p);
        if (e->kind != E_HOLE)
            continue;
        if (e->start > pos) {
            j->pieces[j->np][0] = pos;
            j->pieces[j->np][1] = e->start;
            j->np++;
        }
        pos = e->end;
    }
    if (end > pos) {
        j->pieces[j->np][0] = pos;
        j->pieces[j->np][1] = end;
        j->np++;
    }
    FOR_EACH(c, p) {
        Entry *e = ENTRY(c, p);
        if (e->kind == E_MAPPED)
            e->m->state = ST_CLOSED;
    }
    c->version++;
    return 1;
}

/* Without the GIL: release the pieces, stopping at the first refusal. */
static void
close_syscalls(CloseJob *j)
{
    j->err = 0;
    for (; j->done < j->np; j->done++) {
        j->err = sys_munmap(j->pieces[j->done][0], j->pieces[j->done][1] - j->pieces[j->done][0]);
        if (j->err)
            break;
    }
}

/* Release everything except holes (something else may live there now). On a failed munmap:
   the pieces released before it become holes, the mappings in them stay closed, the others
   open again. Returns the errno (0: closed). The references the index held are left in
   j->drop for close_drop(), outside the transition. */
static long
close_commit(Core *c, CloseJob *j)
{
    Py_ssize_t done = j->done;
    uint64_t (*pieces)[2] = j->pieces;
    if (!j->err) {
        FOR_EACH(c, p) {
            Entry *e = ENTRY(c, p);
            if (e->kind == E_MAPPED)
                j->drop[j->nd++] = e->m;
        }
        for (Py_ssize_t b = 0; b < c->nb; b++)
            PyMem_RawFree(c->bk[b]);
        c->nb = c->n = c->nholes = c->nmapped = 0;
        c->closed = 1;
    }
    else {
        /* The entries in released pieces go (their mappings stay closed); the others stay
           (their mappings open again); the released pieces become holes. */
        Pos p = pos_first();
        while (pos_valid(c, p)) {
            Entry *e = ENTRY(c, p);
            int released = 0;
            for (Py_ssize_t k = 0; k < done && !released; k++)
                released = e->start >= pieces[k][0] && e->start < pieces[k][1];
            if (!released) {
                if (e->kind == E_MAPPED)
                    e->m->state = ST_OPEN;
                pos_next(c, &p);
                continue;
            }
            MapObj *m = index_remove_at(c, p);
            if (m != NULL) {
                j->drop[j->nd++] = m;
                c->nmapped--;
            }
            if (p.b < c->nb && p.i >= c->bk[p.b]->n) { /* the next entry is in the next bucket */
                p.b++;
                p.i = 0;
            }
        }
        for (Py_ssize_t k = 0; k < done; k++)
            index_insert(c, pieces[k][0], pieces[k][1], NULL, E_HOLE);
    }
    c->version++;
    leave_exclusive(c);
    PyMem_RawFree(j->pieces);
    j->pieces = NULL;
    return j->err;
}

/* Drop the references a committed close left (this can run finalizers: not in a commit). */
static void
close_drop(CloseJob *j)
{
    MapObj **drop = j->drop;
    Py_ssize_t nd = j->nd;
    j->drop = NULL;
    j->nd = 0;
    for (Py_ssize_t k = 0; k < nd; k++)
        Py_DECREF(drop[k]);
    PyMem_RawFree(drop);
    PyMem_RawFree(j->pieces);
    j->pieces = NULL;
}

/* _close() -> 0 (closed, or closed already), a busy code, or the errno of a refusal. */
static PyObject *
core_close(Core *c, PyObject *unused)
{
    (void)unused;
    CloseJob j;
    long code;
    int r = close_begin(c, &j, 1, &code);
    if (r <= 0)
        return r < 0 ? NULL : PyLong_FromLong(code);
    Py_BEGIN_ALLOW_THREADS
    close_syscalls(&j);
    Py_END_ALLOW_THREADS
    long err = close_commit(c, &j);
    close_drop(&j);
    return PyLong_FromLong(err);
}
