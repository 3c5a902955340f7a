/* _core_map.h: Making a mapping (the MAP_SYNC probe, the overlay of the placeholder) and
 * unmapping one: begin, syscalls, commit. Part of _core.c (included once, in order: one
 * translation unit, every function static).
 */

/* -- map ----------------------------------------------------------------------------------- */

/* The MAP_SYNC verdict by device (st_dev): learned from the first shared map of a file on a
   device, then reused (on a non-DAX file system the refused attempt would cost a syscall on
   every map). Read and written under dev_mu: workers consult it without the GIL. */
#define DEV_CACHE 64
static struct {
    unsigned long long dev;
    int sync;
} dev_cache[DEV_CACHE];
static int dev_cached;
static pthread_mutex_t dev_mu = PTHREAD_MUTEX_INITIALIZER;

static int
dev_sync(unsigned long long dev)
{
    int v = -1;
    pthread_mutex_lock(&dev_mu);
    for (int i = 0; i < dev_cached; i++)
        if (dev_cache[i].dev == dev) {
            v = dev_cache[i].sync;
            break;
        }
    pthread_mutex_unlock(&dev_mu);
    return v;
}

static void
dev_learn(unsigned long long dev, int sync)
{
    pthread_mutex_lock(&dev_mu);
    int i = 0;
    while (i < dev_cached && dev_cache[i].dev != dev)
        i++;
    if (i < DEV_CACHE) {
        dev_cache[i].dev = dev;
        dev_cache[i].sync = sync;
        if (i == dev_cached)
            dev_cached++;
    }
    pthread_mutex_unlock(&dev_mu);
}

enum { K_FILE_SHARED = 0, K_FILE_PRIVATE = 1, K_ANON_SHARED = 2, K_ANON_PRIVATE = 3 };
static const int kind_flags[4] = {
    MAP_SHARED | MAP_FIXED,
    MAP_PRIVATE | MAP_FIXED,
    MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED,
    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
};

/* Each transition that makes syscalls is three steps: begin (GIL held: admission, checks, the
   claim or mark that stands for the work), the syscalls (no GIL: in the caller's thread for
   the sync API, in a worker of the executor for the async one), and commit (GIL held: the
   index and the mapping take the outcome, the admission is given back). What the syscall step
   needs and finds travels in one struct, so it touches no Python object. */

/* -- map ----------------------------------------------------------------------------------- */

typedef struct {
    uint64_t addr, length, span, dev;
    int64_t file_offset, fsize;
    int bits, kind, fd, sync, check_fd;
    int close_fd; /* the job owns fd (taken from an OwnedFd by the begin): closed after mmap */
    int err, learned, gran, hole; /* err -1: the descriptor check refused (fsize says why) */
} MapJob;

/* Parse _map's arguments (cls, offset, length, bits, kind, fd, file_offset, dev, protection,
   sharing, file) and make the mapping object (everything that allocates comes first). */
static MapObj *
map_prepare(Core *c, PyObject *const *args, long long *offset, MapJob *j)
{
    if (!PyType_Check(args[0]) || !PyType_IsSubtype((PyTypeObject *)args[0], &MapType)) {
        PyErr_SetString(PyExc_TypeError, "_map: bad arguments");
        return NULL;
    }
    memset(j, 0, sizeof *j);
    *offset = PyLong_AsLongLong(args[1]);
    j->length = PyLong_AsUnsignedLongLong(args[2]);
    j->bits = as_c_int(args[3]);
    j->kind = as_c_int(args[4]);
    j->fd = as_c_int(args[5]);
    j->file_offset = PyLong_AsLongLong(args[6]);
    j->dev = PyLong_AsUnsignedLongLong(args[7]);
    if (PyErr_Occurred())
        return NULL;
    if (j->kind < 0 || j->kind > 3 || j->length == 0) {
        PyErr_SetString(PyExc_ValueError, "_map: bad arguments");
        return NULL;
    }
    j->span = (j->length + page_mask) & ~page_mask;
    if (j->span < j->length)
        j->span = UINT64_MAX & ~page_mask; /* cannot fit: refused below */
    j->sync = j->learned = -1;
    PyTypeObject *cls = (PyTypeObject *)args[0];
    MapObj *m = (MapObj *)cls->tp_alloc(cls, 0);
    if (m == NULL)
        return NULL;
    m->views = PyList_New(0);
    if (m->views == NULL || index_reserve(c) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(c);
    m->rsv = (PyObject *)c;
    Py_INCREF(args[8]);
    m->protection = args[8];
    Py_INCREF(args[9]);
    m->sharing = args[9];
    Py_INCREF(args[10]);
    m->file = args[10];
    m->size = j->length;
    m->span = j->span;
    m->bits = j->bits;
    m->file_offset = (unsigned long long)j->file_offset;
    m->state = ST_NEW;
    return m;
}

/* Admission and the claim. 1: claimed (admitted shared); 0: refused, *code says why (nothing
   held; C_WOULD_BLOCK when not `blocking` and the gate would make it wait); -1: exception. */
static int
map_begin(Core *c, MapObj *m, long long offset, MapJob *j, int blocking, long *code)
{
    *code = 0;
    if (c->closed) {
        *code = C_CLOSED;
        return 0;
    }
    if (!blocking) {
        if (!try_enter_shared(c)) {
            *code = C_WOULD_BLOCK;
            return 0;
        }
    }
    else {
        if (enter_shared(c) < 0)
            return -1;
        /* The wait released the GIL: other maps may have used the room map_prepare made (an
           insert must never allocate). Cannot fail when nothing was inserted meanwhile. */
        if (index_reserve(c) < 0) {
            leave_shared(c);
            return -1;
        }
    }
    uint64_t span = j->span;
    if (c->closed)
        *code = C_CLOSED;
    else if (offset & (long long)page_mask)
        *code = C_OFF_UNALIGNED;
    else if (offset < 0)
        *code = C_OFF_NEGATIVE;
    else if ((u128)(uint64_t)offset + span > c->size)
        *code = C_NO_FIT;
    else if (overlaps(c, c->address + (uint64_t)offset, c->address + (uint64_t)offset + span))
        *code = C_EXISTS;
    if (*code) {
        leave_shared(c);
        return 0;
    }
    uint64_t addr = c->address + (uint64_t)offset;
    index_insert(c, addr, addr + span, NULL, E_CLAIM); /* room reserved by map_prepare */
    m->addr = j->addr = addr;
    if (j->kind == K_FILE_SHARED && !j->check_fd)
        j->sync = dev_sync(j->dev);
    return 1;
}

/* The syscalls, with the claim held (no GIL): the descriptor check when asked (a job of the
   async API checks the file itself), then the mmap with the MAP_SYNC probe, and the mend of a
   failed one. */
static void
map_and_mend(MapJob *j)
{
    if (j->check_fd) {
        int64_t r;
        int e;
        while ((e = inject_check(SC_FSTAT)) == EINTR)
            ;
        if (e)
            r = -(int64_t)e;
        else
            while ((r = ap_fdcheck_dev(j->fd, &j->dev)) == -EINTR)
                ;
        j->fsize = r;
        if (r <= 0 || (u128)(uint64_t)j->file_offset + j->length > (uint64_t)r) {
            j->err = -1;
            return;
        }
        if (j->kind == K_FILE_SHARED)
            j->sync = dev_sync(j->dev);
    }
    uint64_t addr = j->addr, length = j->length;
    int err = 0;
    j->gran = GRAN_BYTE;
    if (j->kind == K_FILE_SHARED) {
        j->gran = GRAN_PAGE;
        if (j->sync != 0) {
            err = sys_mmap_fixed(addr, length, j->bits, MAP_SHARED_VALIDATE | MAP_SYNC | MAP_FIXED,
                                 j->fd, j->file_offset);
            if (!err) {
                j->learned = 1;
                j->gran = GRAN_CACHE_LINE;
            }
            else if (err == EOPNOTSUPP || err == EINVAL)
                j->learned = 0;
        }
        if (j->sync == 0 || err)
            err = sys_mmap_fixed(addr, length, j->bits, kind_flags[j->kind], j->fd,
                                 j->file_offset);
    }
    else
        err = sys_mmap_fixed(addr, length, j->bits, kind_flags[j->kind], j->fd, j->file_offset);
    if (err) {
        /* Current kernels leave the old placeholder in place when a MAP_FIXED mmap fails;
           older ones could leave a hole. A NOREPLACE placeholder tells the two apart. */
        int e = fill_hole(addr, j->span);
        if (e && e != EEXIST && covered(addr, addr + j->span) != 1)
            j->hole = 1;
    }
    j->err = err;
}

/* The syscalls of a map (no GIL), then the close of a descriptor the job owns: a path's,
   opened by an open job and needed only until the mmap. */
static void
map_syscalls(MapJob *j)
{
    map_and_mend(j);
    if (j->close_fd) {
        j->close_fd = 0;
        close(j->fd); /* released even when close reports EINTR (Linux) */
    }
}

/* Commit or drop the claim: the new open mapping (a new reference), or the int code (an errno,
   | HOLE_BIT when the range became a hole; C_FILE when the job's descriptor check refused). */
static PyObject *
map_commit(Core *c, MapObj *m, MapJob *j)
{
    if (j->learned >= 0)
        dev_learn(j->dev, j->learned);
    Pos pos;
    Entry *claim = entry_at(c, j->addr, &pos);
    if (j->err) {
        long code;
        if (j->err == -1) {
            index_remove_at(c, pos);
            code = C_FILE;
        }
        else if (j->hole) {
            claim->kind = E_HOLE;
            c->nholes++;
            c->version++;
            code = j->err | HOLE_BIT;
        }
        else {
            index_remove_at(c, pos);
            code = j->err;
        }
        leave_shared(c);
        return PyLong_FromLong(code);
    }
    m->gran = j->gran;
    m->state = ST_OPEN;
    Py_INCREF(m);
    claim->m = m;
    claim->kind = E_MAPPED;
    c->nmapped++;
    c->version++;
    leave_shared(c);
    Py_INCREF(m);
    return (PyObject *)m;
}

/* _map(cls, offset, length, bits, kind, fd, file_offset, dev, protection, sharing, file)
   -> the new open mapping (an instance of cls), or an int code / errno (| HOLE_BIT). */
static PyObject *
core_map(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "_map: bad arguments");
        return NULL;
    }
    long long offset;
    long code;
    MapJob j;
    MapObj *m = map_prepare(c, args, &offset, &j);
    if (m == NULL)
        return NULL;
    int r = map_begin(c, m, offset, &j, 1, &code);
    if (r <= 0) {
        Py_DECREF(m);
        return r < 0 ? NULL : PyLong_FromLong(code);
    }
    Py_BEGIN_ALLOW_THREADS
    map_syscalls(&j);
    Py_END_ALLOW_THREADS
    PyObject *result = map_commit(c, m, &j);
    Py_DECREF(m);
    return result;
}

static MapObj *
as_mapping(Core *c, PyObject *arg)
{
    if (!PyObject_TypeCheck(arg, &MapType) || ((MapObj *)arg)->rsv != (PyObject *)c) {
        PyErr_SetString(PyExc_TypeError, "not a mapping of this reservation");
        return NULL;
    }
    return (MapObj *)arg;
}

/* -- unmap --------------------------------------------------------------------------------- */

typedef struct {
    uint64_t addr, span;
    int err, hole;
} UnmapJob;

/* Admission and the UNMAPPING mark. 1: marked; 0: *code is the outcome (0: nothing to do, a
   busy code, C_WOULD_BLOCK when not `blocking` and it would wait); -1: exception. Waits for a
   persist or an unmap of the same mapping in flight. */
static int
unmap_begin(Core *c, MapObj *m, int blocking, UnmapJob *j, long *code)
{
    *code = 0;
    if (m->state == ST_NEW) /* found by the collector while its map waits: not mapped yet */
        return 0;
    if (m->state != ST_OPEN || m->pins || m->changing || !try_enter_shared(c)) {
        if (m->state == ST_CLOSED)
            return 0;
        if (!blocking) {
            *code = C_WOULD_BLOCK;
            return 0;
        }
        if (enter_shared(c) < 0)
            return -1;
        while (m->state == ST_UNMAPPING || m->pins || m->changing) {
            if (gate_wait(c) < 0) {
                leave_shared_waking(c);
                return -1;
            }
        }
        if (m->state == ST_CLOSED) {
            leave_shared(c);
            return 0;
        }
    }
    int busy = views_alive(m, code);
    if (busy) {
        leave_shared(c);
        return busy < 0 ? -1 : 0;
    }
    m->state = ST_UNMAPPING;
    c->version++;
    j->addr = m->addr;
    j->span = m->span;
    j->err = j->hole = 0;
    return 1;
}

static void
unmap_syscalls(UnmapJob *j)
{
    j->err = sys_mmap_fixed(j->addr, j->span, PROT_NONE, PH_FIXED, -1, 0);
    if (j->err == ENOMEM) {
        /* At the VMA limit the kernel refuses the overlay (it needs an extra VMA for a moment)
           while munmap + a NOREPLACE placeholder (which merges) goes through. Between the two
           the range is free: if something else takes it, it becomes a hole. */
        j->err = sys_munmap(j->addr, j->span);
        if (!j->err && fill_hole(j->addr, j->span))
            j->hole = 1;
    }
}

/* 0, C_HOLE_NOTED (done, but the range could only be freed), or the errno of a refusal
   (nothing changed). */
static long
unmap_commit(Core *c, MapObj *m, UnmapJob *j)
{
    if (j->err) {
        m->state = ST_OPEN;
        leave_shared_waking(c);
        return j->err;
    }
    Pos pos;
    Entry *e = entry_at(c, j->addr, &pos);
    MapObj *ref = NULL;
    if (j->hole) { /* stays in the index, invisible, until repaired */
        ref = e->m;
        e->m = NULL;
        e->kind = E_HOLE;
        c->nholes++;
    }
    else
        ref = index_remove_at(c, pos);
    m->state = ST_CLOSED;
    c->nmapped--;
    c->version++;
    leave_shared_waking(c);
    Py_XDECREF(ref); /* the caller still holds m: nothing is freed here */
    return j->hole ? C_HOLE_NOTED : 0;
}

/* _unmap(m) -> 0, C_HOLE_NOTED, a busy code, or the errno of a refusal (nothing changed). */
static PyObject *
core_unmap(Core *c, PyObject *arg)
{
    MapObj *m = as_mapping(c, arg);
    if (m == NULL)
        return NULL;
    UnmapJob j;
    long code;
    int r = unmap_begin(c, m, 1, &j, &code);
    if (r <= 0)
        return r < 0 ? NULL : PyLong_FromLong(code);
    Py_BEGIN_ALLOW_THREADS
    unmap_syscalls(&j);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(unmap_commit(c, m, &j));
}
