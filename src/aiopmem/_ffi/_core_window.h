/* _core_window.h: The buffer exporter (Window) behind every view, and the registry of the
 * windows alive over a mapping. Part of _core.c (included once, in order: one translation unit,
 * every function static).
 */

/* ============================================================================ views ==== */

/* Pinning by liveness. Every view is backed by a Window of its own, an object that exposes
 * `length` bytes at `addr` through the buffer protocol. The library keeps only *weak*
 * references to windows (one list per mapping the window covers), so a window is alive exactly
 * while something outside the library reaches it: a memoryview or a slice of one, `view.obj`,
 * a numpy array built with `buffer=view` (it keeps `view.obj` and releases the export at once),
 * a ctypes object... An unmap or a close goes ahead only when every window over the memory is
 * dead, and a dead window cannot come back, so nothing can reach memory once it is unmapped.
 * A window holds a strong reference to its owner (the reservation): a reservation dropped
 * while a view lives stays mapped until the last window dies, and is released then. Users
 * cannot make or change windows: the type cannot be instantiated and has no methods. */
typedef struct {
    PyObject_HEAD
    char *addr;
    Py_ssize_t length;
    int readonly;
    PyObject *owner;
    PyObject *weakreflist;
} Window;

static int
window_getbuffer(Window *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->length, self->readonly,
                             flags);
}

static PyBufferProcs window_as_buffer = {(getbufferproc)window_getbuffer, NULL};

static int
window_traverse(Window *self, visitproc visit, void *arg)
{
    Py_VISIT(self->owner);
    return 0;
}

static int
window_clear(Window *self)
{
    Py_CLEAR(self->owner);
    return 0;
}

static void
window_dealloc(Window *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    Py_CLEAR(self->owner);
    PyObject_GC_Del(self);
}

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.Window",
    .tp_basicsize = sizeof(Window),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_doc = "The memory behind a view of an aiopmem mapping (made by the library only).",
    .tp_as_buffer = &window_as_buffer,
    .tp_traverse = (traverseproc)window_traverse,
    .tp_clear = (inquiry)window_clear,
    .tp_dealloc = (destructor)window_dealloc,
    .tp_weaklistoffset = offsetof(Window, weakreflist),
};

static int
ref_alive(PyObject *ref)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj;
    int r = PyWeakref_GetRef(ref, &obj);
    Py_XDECREF(obj);
    return r;
#else
    PyObject *obj = PyWeakref_GetObject(ref);
    return obj == NULL ? -1 : obj != Py_None;
#endif
}

/* Drop the dead references of `list` in place; returns how many live ones remain, or -1.
   Runs no Python code (a weak reference without callback dies silently). */
static Py_ssize_t
prune(PyObject *list)
{
    Py_ssize_t n = PyList_GET_SIZE(list), kept = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        int alive = ref_alive(PyList_GET_ITEM(list, i));
        if (alive < 0)
            return -1;
        if (alive) {
            if (kept != i) {
                PyObject *tmp = PyList_GET_ITEM(list, kept);
                PyList_SET_ITEM(list, kept, PyList_GET_ITEM(list, i));
                PyList_SET_ITEM(list, i, tmp);
            }
            kept++;
        }
    }
    if (kept < n && PyList_SetSlice(list, kept, n, NULL) < 0)
        return -1;
    return kept;
}

/* A view in two steps, so that the allocations (which may run a garbage collection, and so
   Python code) happen before the caller re-checks the state and registers the window. */
typedef struct {
    Window *w;
    PyObject *ref;
    PyObject *mv;
} Prepared;

static int
view_prepare(Prepared *p, PyObject *owner, uint64_t addr, Py_ssize_t length, int readonly)
{
    p->w = NULL;
    p->ref = p->mv = NULL;
    Window *w = PyObject_GC_New(Window, &WindowType);
    if (w == NULL)
        return -1;
    w->addr = (char *)(uintptr_t)addr;
    w->length = length;
    w->readonly = readonly;
    Py_INCREF(owner);
    w->owner = owner;
    w->weakreflist = NULL;
    PyObject_GC_Track(w);
    p->w = w;
    p->ref = PyWeakref_NewRef((PyObject *)w, NULL);
    if (p->ref == NULL)
        goto fail;
    p->mv = PyMemoryView_FromObject((PyObject *)w);
    if (p->mv == NULL)
        goto fail;
    return 0;
fail:
    Py_CLEAR(p->ref);
    Py_CLEAR(p->w);
    return -1;
}

static void
view_discard(Prepared *p)
{
    Py_CLEAR(p->mv);
    Py_CLEAR(p->ref);
    Py_CLEAR(p->w);
}

/* Registration lists are pruned when their length reaches a power of two (>= 8): amortized
   constant work per view. A list append reallocates with PyMem (no collection). */
static int
register_in(PyObject *list, PyObject *ref)
{
    Py_ssize_t n = PyList_GET_SIZE(list);
    if (n >= 8 && (n & (n - 1)) == 0 && prune(list) < 0)
        return -1;
    return PyList_Append(list, ref);
}

/* new_view(owner, holders, address, length, readonly): the generic form (tests, benchmarks). */
static PyObject *
new_view(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "new_view(owner, holders, address, length, readonly)");
        return NULL;
    }
    PyObject *owner = args[0], *holders = args[1];
    if (!PyTuple_Check(holders)) {
        PyErr_SetString(PyExc_TypeError, "holders must be a tuple of lists");
        return NULL;
    }
    Py_ssize_t nh = PyTuple_GET_SIZE(holders);
    for (Py_ssize_t i = 0; i < nh; i++) {
        if (!PyList_CheckExact(PyTuple_GET_ITEM(holders, i))) {
            PyErr_SetString(PyExc_TypeError, "holders must be a tuple of lists");
            return NULL;
        }
    }
    unsigned long long addr = PyLong_AsUnsignedLongLong(args[2]);
    if (addr == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t length = PyLong_AsSsize_t(args[3]);
    if (length == -1 && PyErr_Occurred())
        return NULL;
    if (length < 0) {
        PyErr_SetString(PyExc_ValueError, "negative length");
        return NULL;
    }
    int readonly = PyObject_IsTrue(args[4]);
    if (readonly < 0)
        return NULL;
    Prepared p;
    if (view_prepare(&p, owner, addr, length, readonly) < 0)
        return NULL;
    for (Py_ssize_t i = 0; i < nh; i++) {
        if (register_in(PyTuple_GET_ITEM(holders, i), p.ref) < 0) {
            view_discard(&p);
            return NULL;
        }
    }
    PyObject *mv = p.mv;
    p.mv = NULL;
    view_discard(&p);
    return mv;
}

static PyObject *
live(PyObject *module, PyObject *lists)
{
    (void)module;
    if (!PyTuple_Check(lists)) {
        PyErr_SetString(PyExc_TypeError, "live() takes a tuple of lists");
        return NULL;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(lists); i++) {
        PyObject *list = PyTuple_GET_ITEM(lists, i);
        if (!PyList_CheckExact(list)) {
            PyErr_SetString(PyExc_TypeError, "live() takes a tuple of lists");
            return NULL;
        }
        Py_ssize_t n = prune(list);
        if (n < 0)
            return NULL;
        total += n;
    }
    return PyLong_FromSsize_t(total);
}
