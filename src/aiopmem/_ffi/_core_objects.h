/* _core_objects.h: Views and lookups, the method tables of ReservationBase and MappingBase, and
 * reserve(). Part of _core.c (included once, in order: one translation unit, every function
 * static).
 */

/* -- views --------------------------------------------------------------------------------- */

/* _mview(m, offset, length, readonly) -> memoryview, or C_CLOSED, or C_NOACCESS (no READ now).
   Ranges checked by Python; the view is read-only also when the mapping lacks WRITE now. */
static PyObject *
core_mview(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4)
        return PyErr_Format(PyExc_TypeError, "_mview(m, offset, length, readonly)");
    MapObj *m = as_mapping(c, args[0]);
    if (m == NULL)
        return NULL;
    unsigned long long off = PyLong_AsUnsignedLongLong(args[1]);
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    int readonly = PyObject_IsTrue(args[3]);
    if (PyErr_Occurred())
        return NULL;
    if (m->state != ST_OPEN)
        return PyLong_FromLong(C_CLOSED);
    /* The access is the mapping's now, whatever the caller saw: a protect() in another
       thread may have taken some away since (it refuses only while views are registered). */
    if (!(m->bits & PROT_READ))
        return PyLong_FromLong(C_NOACCESS);
    if (!(m->bits & PROT_WRITE))
        readonly = 1;
    Prepared p;
    if (view_prepare(&p, (PyObject *)c, m->addr + off, n, readonly) < 0)
        return NULL;
    /* The allocations may have run other code: check again, then register (no allocation
       that can collect happens from here on). */
    if (m->state != ST_OPEN) {
        view_discard(&p);
        return PyLong_FromLong(C_CLOSED);
    }
    if (!(m->bits & PROT_READ) || (!readonly && !(m->bits & PROT_WRITE))) {
        view_discard(&p);
        return PyLong_FromLong(C_NOACCESS);
    }
    if (register_in(m->views, p.ref) < 0) {
        view_discard(&p);
        return NULL;
    }
    PyObject *mv = p.mv;
    p.mv = NULL;
    view_discard(&p);
    return mv;
}

/* _rview(lo, hi) -> memoryview over [lo, hi) (absolute), or ("gap", pos, gap_end), or
   ("noread", mapping). Offsets checked by Python. */
static PyObject *
core_rview(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_rview(lo, hi)");
    unsigned long long lo = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long hi = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    for (;;) {
        if (c->closed)
            return PyLong_FromLong(C_CLOSED);
        unsigned long long version = c->version;
        uint64_t pos = lo, gap_end = hi;
        int readonly = 0;
        Pos first = first_ending_after(c, lo);
        Py_ssize_t count = 0;
        for (Pos q = first; pos_valid(c, q) && ENTRY(c, q)->start < hi; pos_next(c, &q)) {
            Entry *e = ENTRY(c, q);
            if (e->start > pos) {
                gap_end = e->start;
                break;
            }
            if (e->kind != E_MAPPED || e->m->state != ST_OPEN) {
                gap_end = e->end;
                break;
            }
            if (!(e->m->bits & PROT_READ))
                return Py_BuildValue("sO", "noread", (PyObject *)e->m);
            if (!(e->m->bits & PROT_WRITE))
                readonly = 1;
            pos = e->end;
            count++;
        }
        if (pos < hi)
            return Py_BuildValue("sKK", "gap", (unsigned long long)pos,
                                 (unsigned long long)(gap_end < hi ? gap_end : hi));
        Prepared p;
        if (view_prepare(&p, (PyObject *)c, lo, (Py_ssize_t)(hi - lo), readonly) < 0)
            return NULL;
        if (c->version != version || c->closed) {
            view_discard(&p);
            continue; /* the allocations ran code that changed the mappings: start over */
        }
        Pos q = first;
        for (Py_ssize_t k = 0; k < count; k++, pos_next(c, &q)) {
            if (register_in(ENTRY(c, q)->m->views, p.ref) < 0) {
                view_discard(&p);
                return NULL;
            }
        }
        PyObject *mv = p.mv;
        p.mv = NULL;
        view_discard(&p);
        return mv;
    }
}

/* -- lookups ------------------------------------------------------------------------------- */

static PyObject *
ret_map(Entry *e)
{
    Py_INCREF(e->m);
    return (PyObject *)e->m;
}

/* _find(lo, hi): the lowest mapping intersecting [lo, hi) (absolute). */
static PyObject *
core_find(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_find(lo, hi)");
    unsigned long long lo = PyLong_AsUnsignedLongLong(args[0]);
    unsigned long long hi = PyLong_AsUnsignedLongLong(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (c->closed)
        Py_RETURN_NONE;
    for (Pos p = first_ending_after(c, lo); pos_valid(c, p) && ENTRY(c, p)->start < hi;
         pos_next(c, &p))
        if (ENTRY(c, p)->kind == E_MAPPED)
            return ret_map(ENTRY(c, p));
    Py_RETURN_NONE;
}

/* _step(m, direction): the mapping before (-1) or after (+1) m, or None. */
static PyObject *
core_step(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "_step(m, direction)");
    MapObj *m = as_mapping(c, args[0]);
    long d = PyLong_AsLong(args[1]);
    if (m == NULL || PyErr_Occurred())
        return NULL;
    if (c->closed || m->state == ST_CLOSED || m->state == ST_NEW)
        Py_RETURN_NONE;
    Pos p;
    if (entry_at(c, m->addr, &p) == NULL)
        Py_RETURN_NONE;
    for (;;) {
        if (d > 0)
            pos_next(c, &p);
        else
            pos_prev(c, &p);
        if (p.b < 0 || !pos_valid(c, p))
            Py_RETURN_NONE;
        if (ENTRY(c, p)->kind == E_MAPPED)
            return ret_map(ENTRY(c, p));
    }
}

static PyObject *
core_edge(Core *c, PyObject *arg)
{
    long d = PyLong_AsLong(arg);
    if (d == -1 && PyErr_Occurred())
        return NULL;
    if (c->closed || c->nb == 0)
        Py_RETURN_NONE;
    Pos p = pos_first();
    if (d > 0) {
        p.b = c->nb - 1;
        p.i = c->bk[p.b]->n - 1;
    }
    while (p.b >= 0 && pos_valid(c, p)) {
        if (ENTRY(c, p)->kind == E_MAPPED)
            return ret_map(ENTRY(c, p));
        if (d > 0)
            pos_prev(c, &p);
        else
            pos_next(c, &p);
    }
    Py_RETURN_NONE;
}

/* _values() -> list of the mappings in address order (a consistent snapshot). */
static PyObject *
core_values(Core *c, PyObject *unused)
{
    (void)unused;
    for (;;) {
        if (c->closed)
            return PyList_New(0);
        unsigned long long version = c->version;
        PyObject *list = PyList_New(c->nmapped);
        if (list == NULL)
            return NULL;
        if (c->version != version) { /* the allocation ran code that changed the index */
            Py_DECREF(list);
            continue;
        }
        Py_ssize_t j = 0;
        FOR_EACH(c, p) {
            Entry *e = ENTRY(c, p);
            if (e->kind == E_MAPPED) {
                Py_INCREF(e->m);
                PyList_SET_ITEM(list, j++, (PyObject *)e->m);
            }
        }
        return list;
    }
}

/* _snapshot() -> (address, size, max_size, mappings, holes), or None when closed. */
static PyObject *core_holes(Core *c, PyObject *unused);

static PyObject *
core_snapshot(Core *c, PyObject *unused)
{
    for (;;) {
        if (c->closed)
            Py_RETURN_NONE;
        unsigned long long version = c->version;
        PyObject *values = core_values(c, unused);
        PyObject *holes = values ? core_holes(c, unused) : NULL;
        PyObject *r = holes ? Py_BuildValue("KKKOO", c->address, c->size, c->max_size, values,
                                            holes)
                            : NULL;
        Py_XDECREF(values);
        Py_XDECREF(holes);
        if (r == NULL || c->version == version)
            return r;
        Py_DECREF(r); /* the allocations ran code that changed the state: again */
    }
}

/* _holes() -> list of (start, end) absolute ranges. The ranges are copied out first: building
   the tuples allocates, which may run code that changes the index. */
static PyObject *
core_holes(Core *c, PyObject *unused)
{
    (void)unused;
    Py_ssize_t nh = 0;
    uint64_t (*holes)[2] = PyMem_RawMalloc((size_t)(c->nholes + 1) * sizeof *holes);
    if (holes == NULL)
        return PyErr_NoMemory();
    nh = copy_holes(c, holes);
    PyObject *list = PyList_New(nh);
    for (Py_ssize_t k = 0; list != NULL && k < nh; k++) {
        PyObject *t = Py_BuildValue("KK", (unsigned long long)holes[k][0],
                                    (unsigned long long)holes[k][1]);
        if (t == NULL)
            Py_CLEAR(list);
        else
            PyList_SET_ITEM(list, k, t);
    }
    PyMem_RawFree(holes);
    return list;
}

/* _gate_state() -> (shared, exclusive, waiting, queued, entries): at rest, (0, False, 0, 0, n)
   with n the mappings and holes. */
static PyObject *
core_gate_state(Core *c, PyObject *unused)
{
    (void)unused;
    Py_ssize_t claims = c->n - c->nholes - c->nmapped;
    return Py_BuildValue("lOllnn", c->shared, c->exclusive ? Py_True : Py_False, c->waiting,
                         c->queued, claims, c->n);
}

/* _gate_stats() -> (shared operations that waited, the most exclusive operations one of them
   waited behind, exclusive operations that waited, the most shared operations admitted while
   one of them waited): the bounds of phase-fair admission, counted where they are kept. */
static PyObject *
core_gate_stats(Core *c, PyObject *unused)
{
    (void)unused;
    return Py_BuildValue("LLLL", c->shared_waits, c->over_shared, c->excl_waits, c->over_excl);
}

/* _abandon(): forget the range without releasing it (tests of torn states only). */
static PyObject *
core_abandon(Core *c, PyObject *unused)
{
    (void)unused;
    c->closed = 1;
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"_map_job", (PyCFunction)(void (*)(void))core_map_job, METH_FASTCALL, NULL},
    {"_open_job", (PyCFunction)(void (*)(void))core_open_job, METH_FASTCALL, NULL},
    {"_close_job", (PyCFunction)(void (*)(void))core_close_job, METH_FASTCALL, NULL},
    {"_extend_job", (PyCFunction)(void (*)(void))core_extend_job, METH_FASTCALL, NULL},
    {"_shrink_job", (PyCFunction)(void (*)(void))core_shrink_job, METH_FASTCALL, NULL},
    {"_unmap_job", (PyCFunction)(void (*)(void))core_unmap_job, METH_FASTCALL, NULL},
    {"_persist_job", (PyCFunction)(void (*)(void))core_persist_job, METH_FASTCALL, NULL},
    {"_map", (PyCFunction)(void (*)(void))core_map, METH_FASTCALL, NULL},
    {"_unmap", (PyCFunction)core_unmap, METH_O, NULL},
    {"_persist", (PyCFunction)(void (*)(void))core_persist, METH_FASTCALL, NULL},
    {"_mem", (PyCFunction)(void (*)(void))core_mem, METH_FASTCALL, NULL},
    {"_mem_job", (PyCFunction)(void (*)(void))core_mem_job, METH_FASTCALL, NULL},
    {"_extend", (PyCFunction)core_extend, METH_O, NULL},
    {"_shrink", (PyCFunction)(void (*)(void))core_shrink, METH_FASTCALL, NULL},
    {"_extend_nowait", (PyCFunction)core_extend_nowait, METH_O, NULL},
    {"_shrink_nowait", (PyCFunction)(void (*)(void))core_shrink_nowait, METH_FASTCALL, NULL},
    {"extend", (PyCFunction)(void (*)(void))core_extend_public, METH_FASTCALL | METH_KEYWORDS,
     EXTEND_DOC},
    {"shrink", (PyCFunction)(void (*)(void))core_shrink_public, METH_FASTCALL | METH_KEYWORDS,
     SHRINK_DOC},
    {"_close", (PyCFunction)core_close, METH_NOARGS, NULL},
    {"_mview", (PyCFunction)(void (*)(void))core_mview, METH_FASTCALL, NULL},
    {"_rview", (PyCFunction)(void (*)(void))core_rview, METH_FASTCALL, NULL},
    {"_find", (PyCFunction)(void (*)(void))core_find, METH_FASTCALL, NULL},
    {"_step", (PyCFunction)(void (*)(void))core_step, METH_FASTCALL, NULL},
    {"_edge", (PyCFunction)core_edge, METH_O, NULL},
    {"_values", (PyCFunction)core_values, METH_NOARGS, NULL},
    {"_holes", (PyCFunction)core_holes, METH_NOARGS, NULL},
    {"_snapshot", (PyCFunction)core_snapshot, METH_NOARGS, NULL},
    {"_gate_state", (PyCFunction)core_gate_state, METH_NOARGS, NULL},
    {"_gate_stats", (PyCFunction)core_gate_stats, METH_NOARGS, NULL},
    {"_abandon", (PyCFunction)core_abandon, METH_NOARGS, NULL},
    {NULL},
};

static PyObject *
core_get_closed(Core *c, void *unused)
{
    (void)unused;
    return PyBool_FromLong(c->closed);
}

static PyObject *
core_get_count(Core *c, void *unused)
{
    (void)unused;
    return PyLong_FromSsize_t(c->nmapped);
}

/* The public attributes are C descriptors too (a Python property costs a call per read, as
   much as an extend inside the headroom); the underscored names are the core's own reads. */
static PyGetSetDef core_getset[] = {
    {"_closed", (getter)core_get_closed, NULL, NULL, NULL},
    {"closed", (getter)core_get_closed, NULL, "True once close() has run.", NULL},
    {"_count", (getter)core_get_count, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_address", T_ULONGLONG, offsetof(Core, address), READONLY, NULL},
    {"_size", T_ULONGLONG, offsetof(Core, size), READONLY, NULL},
    {"_max_size", T_ULONGLONG, offsetof(Core, max_size), READONLY, NULL},
    {"address", T_ULONGLONG, offsetof(Core, address), READONLY,
     "Address of the first usable byte (moves up when the front is shrunk)."},
    {"size", T_ULONGLONG, offsetof(Core, size), READONLY, "Usable size in bytes."},
    {"max_size", T_ULONGLONG, offsetof(Core, max_size), READONLY,
     "Size up to which extend() cannot fail for lack of room (the headroom's end)."},
    {"_facade", T_OBJECT, offsetof(Core, facade), 0, NULL},
    {NULL},
};

static int
core_traverse(Core *c, visitproc visit, void *arg)
{
    Py_VISIT(c->facade);
    FOR_EACH(c, p)
        Py_VISIT(ENTRY(c, p)->m);
    return 0;
}

static int
core_clear(Core *c)
{
    Py_CLEAR(c->facade);
    /* Collected (its finalizer, close(), has run): the index is emptied first and the
       references dropped after, since a mapping's dealloc may run code that uses it. */
    MapObj **drop = c->nmapped ? PyMem_RawMalloc((size_t)c->nmapped * sizeof(MapObj *)) : NULL;
    Py_ssize_t nd = 0;
    if (drop != NULL || !c->nmapped) {
        FOR_EACH(c, p) {
            Entry *e = ENTRY(c, p);
            if (e->m != NULL)
                drop[nd++] = e->m;
        }
    }
    else { /* no memory: the references leak rather than being dropped mid-walk */
    }
    for (Py_ssize_t b = 0; b < c->nb; b++)
        PyMem_RawFree(c->bk[b]);
    c->nb = c->n = c->nholes = c->nmapped = 0;
    c->version++;
    for (Py_ssize_t k = 0; k < nd; k++)
        Py_DECREF(drop[k]);
    PyMem_RawFree(drop);
    return 0;
}

static void
core_dealloc(Core *c)
{
    PyObject_GC_UnTrack(c);
    if (c->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)c);
    core_clear(c);
    PyMem_RawFree(c->bk);
    while (c->free_list != NULL) {
        Bucket *f = c->free_list;
        c->free_list = f->next_free;
        PyMem_RawFree(f);
    }
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    /* A subclass's dealloc releases its heap type (the base is static). */
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.ReservationBase",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The state of a reservation (library use only).",
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_weaklistoffset = offsetof(Core, weakreflist),
    .tp_methods = core_methods,
    .tp_members = core_members,
    .tp_getset = core_getset,
};

/* -- mapping base -------------------------------------------------------------------------- */

static PyMemberDef map_members[] = {
    {"_rsv", T_OBJECT, offsetof(MapObj, rsv), READONLY, NULL},
    {"_views", T_OBJECT, offsetof(MapObj, views), READONLY, NULL},
    {"_file", T_OBJECT, offsetof(MapObj, file), READONLY, NULL},
    {"_protection", T_OBJECT, offsetof(MapObj, protection), READONLY, NULL},
    {"_sharing", T_OBJECT, offsetof(MapObj, sharing), READONLY, NULL},
    {"_facade", T_OBJECT, offsetof(MapObj, facade), 0, NULL},
    {"_addr", T_ULONGLONG, offsetof(MapObj, addr), READONLY, NULL},
    {"_size", T_ULONGLONG, offsetof(MapObj, size), READONLY, NULL},
    {"_span", T_ULONGLONG, offsetof(MapObj, span), READONLY, NULL},
    {"_file_offset", T_ULONGLONG, offsetof(MapObj, file_offset), READONLY, NULL},
    {"_state", T_INT, offsetof(MapObj, state), READONLY, NULL},
    {"_gran", T_INT, offsetof(MapObj, gran), READONLY, NULL},
    {"_pins", T_LONG, offsetof(MapObj, pins), READONLY, NULL},
    {"_locked", T_INT, offsetof(MapObj, locked), READONLY, NULL},
    /* The plain public attributes (as the reservation's: no Python call per read). */
    {"address", T_ULONGLONG, offsetof(MapObj, addr), READONLY,
     "Absolute address of the first mapped byte (never changes)."},
    {"size", T_ULONGLONG, offsetof(MapObj, size), READONLY,
     "Bytes mapped (the length asked for; the last page may be partial)."},
    {"file_offset", T_ULONGLONG, offsetof(MapObj, file_offset), READONLY,
     "Offset in the file of the first mapped byte (0 for anonymous mappings)."},
    {"reservation", T_OBJECT, offsetof(MapObj, rsv), READONLY, "The reservation mapped into."},
    {"protection", T_OBJECT, offsetof(MapObj, protection), READONLY,
     "The access it was mapped with (protect() changes it)."},
    {"sharing", T_OBJECT, offsetof(MapObj, sharing), READONLY, "SHARED or PRIVATE."},
    {NULL},
};

static PyObject *
map_get_closed(MapObj *m, void *unused)
{
    (void)unused;
    return PyBool_FromLong(m->state == ST_CLOSED);
}

static PyGetSetDef map_getset[] = {
    {"closed", (getter)map_get_closed, NULL,
     "True once unmapped (by unmap() or by closing the reservation).", NULL},
    {NULL},
};

static int
map_traverse(MapObj *m, visitproc visit, void *arg)
{
    Py_VISIT(m->facade);
    Py_VISIT(m->rsv);
    Py_VISIT(m->views);
    Py_VISIT(m->file);
    Py_VISIT(m->protection);
    Py_VISIT(m->sharing);
    return 0;
}

static int
map_clear(MapObj *m)
{
    Py_CLEAR(m->facade);
    Py_CLEAR(m->rsv);
    Py_CLEAR(m->views);
    Py_CLEAR(m->file);
    Py_CLEAR(m->protection);
    Py_CLEAR(m->sharing);
    return 0;
}

static void
map_dealloc(MapObj *m)
{
    PyObject_GC_UnTrack(m);
    if (m->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)m);
    map_clear(m);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyTypeObject MapType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.MappingBase",
    .tp_basicsize = sizeof(MapObj),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The state of a mapping (library use only).",
    .tp_traverse = (traverseproc)map_traverse,
    .tp_clear = (inquiry)map_clear,
    .tp_dealloc = (destructor)map_dealloc,
    .tp_weaklistoffset = offsetof(MapObj, weakreflist),
    .tp_members = map_members,
    .tp_getset = map_getset,
};

/* -- reserve ------------------------------------------------------------------------------- */

/* reserve(cls, address or -1, size, max_size or -1, headroom) -> a new reservation (an
   instance of cls), or an int code (C_EXISTS) / errno. Arguments validated by Python. The
   object is made before the range is taken: nothing can come between taking the range and
   its owner. */
static PyObject *
reserve(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    ReserveJob j;
    Core *c = reserve_prepare(args, nargs, &j);
    if (c == NULL)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    reserve_syscalls(&j);
    Py_END_ALLOW_THREADS
    PyObject *r = reserve_commit(c, &j);
    Py_DECREF(c);
    return r;
}
