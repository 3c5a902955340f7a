/* aiopmem._ffi._window: the buffer exporter behind Mapping.view().
 *
 * A Window exposes `length` bytes at `addr` through the buffer protocol and counts the buffers
 * it has handed out, the way Python's mmap object does: a mapping may only be unmapped once
 * try_close() has succeeded, which it does only when no memoryview, slice of one, or object
 * built on one (a numpy array...) still holds the memory. After that, new buffer requests fail,
 * so no sequence of Python calls can reach unmapped memory. Read-only windows refuse writable
 * buffer requests, so `view.obj` cannot be used to write into a PROT_READ page.
 *
 * Thread-safety: every entry point runs with the GIL held and never releases it, so
 * try_close() is atomic with respect to getbuffer in other threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    PyObject_HEAD
    char *addr;
    Py_ssize_t length;
    Py_ssize_t exports;
    int readonly;
    int closed;
} Window;

static int
window_getbuffer(Window *self, Py_buffer *view, int flags)
{
    if (self->closed) {
        PyErr_SetString(PyExc_ValueError, "the mapping is unmapped");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->addr, self->length, self->readonly,
                          flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
window_releasebuffer(Window *self, Py_buffer *view)
{
    (void)view;
    self->exports--;
}

static PyBufferProcs window_as_buffer = {
    (getbufferproc)window_getbuffer,
    (releasebufferproc)window_releasebuffer,
};

static PyObject *
window_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"address", "length", "readonly", NULL};
    unsigned long long addr;
    Py_ssize_t length;
    int readonly;
    Window *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Knp", kwlist, &addr, &length, &readonly))
        return NULL;
    if (length < 0) {
        PyErr_SetString(PyExc_ValueError, "negative length");
        return NULL;
    }
    self = (Window *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->addr = (char *)(uintptr_t)addr;
    self->length = length;
    self->exports = 0;
    self->readonly = readonly;
    self->closed = 0;
    return (PyObject *)self;
}

static PyObject *
window_try_close(Window *self, PyObject *unused)
{
    (void)unused;
    if (self->exports > 0)
        Py_RETURN_FALSE;
    self->closed = 1;
    Py_RETURN_TRUE;
}

static PyObject *
window_reopen(Window *self, PyObject *unused)
{
    (void)unused;
    self->closed = 0;
    Py_RETURN_NONE;
}

static PyObject *
window_get_exports(Window *self, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(self->exports);
}

static PyObject *
window_get_closed(Window *self, void *closure)
{
    (void)closure;
    return PyBool_FromLong(self->closed);
}

static PyMethodDef window_methods[] = {
    {"try_close", (PyCFunction)window_try_close, METH_NOARGS,
     "Close if no buffer is exported; returns whether it closed."},
    {"reopen", (PyCFunction)window_reopen, METH_NOARGS,
     "Undo try_close() (the unmap it guarded failed)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef window_getset[] = {
    {"exports", (getter)window_get_exports, NULL, "Buffers currently exported.", NULL},
    {"closed", (getter)window_get_closed, NULL, "Whether new buffers are refused.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WindowType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._window.Window",
    .tp_basicsize = sizeof(Window),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Buffer exporter over mapped memory, counting its exports.",
    .tp_new = window_new,
    .tp_as_buffer = &window_as_buffer,
    .tp_methods = window_methods,
    .tp_getset = window_getset,
};

static struct PyModuleDef window_module = {
    PyModuleDef_HEAD_INIT, "_window", "Buffer exporter for aiopmem mappings.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__window(void)
{
    PyObject *m;
    if (PyType_Ready(&WindowType) < 0)
        return NULL;
    m = PyModule_Create(&window_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&WindowType);
    if (PyModule_AddObject(m, "Window", (PyObject *)&WindowType) < 0) {
        Py_DECREF(&WindowType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
