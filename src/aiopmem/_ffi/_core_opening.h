/* _core_opening.h: the base of aiopmem.Opening (what reserve(), map_file() and map_anonymous()
 * return), in C: it is made once per map of the async API, and as Python its making, await and
 * finalizer were a sixth of the loop's work per map+unmap pair. Part of _core.c (included once,
 * in order: one translation unit, every function static).
 *
 * OpeningBase(factory, args, name): awaitable (the coroutine factory(*args) is made when it is
 * first awaited, sent to or started), and a coroutine by its methods (send, throw, close). One
 * dropped without ever being started or closed warns, as a coroutine does ("... was never
 * awaited", RuntimeWarning). The async context manager's methods are the Python subclass's.
 */

typedef struct {
    PyObject_HEAD
    PyObject *factory; /* NULL once started or closed */
    PyObject *args;    /* a tuple */
    PyObject *coro;    /* the coroutine, once started */
    PyObject *name;
} OpeningObj;

static PyObject *str_await_, *str_close_, *warnings_warn;

static PyObject *
opening_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *factory, *fargs, *name;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Opening(factory, args, name)");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "OO!U:Opening", &factory, &PyTuple_Type, &fargs, &name))
        return NULL;
    OpeningObj *o = (OpeningObj *)type->tp_alloc(type, 0);
    if (o == NULL)
        return NULL;
    o->factory = Py_NewRef(factory);
    o->args = Py_NewRef(fargs);
    o->name = Py_NewRef(name);
    o->coro = NULL;
    return (PyObject *)o;
}

static int
opening_traverse(OpeningObj *o, visitproc visit, void *arg)
{
    Py_VISIT(o->factory);
    Py_VISIT(o->args);
    Py_VISIT(o->coro);
    Py_VISIT(o->name);
    return 0;
}

static int
opening_clear(OpeningObj *o)
{
    Py_CLEAR(o->factory);
    Py_CLEAR(o->args);
    Py_CLEAR(o->coro);
    return 0;
}

/* Never started nor closed: warn as a coroutine never awaited does (PEP 442 finalizer). */
static void
opening_finalize(OpeningObj *o)
{
    if (o->factory == NULL)
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (warnings_warn == NULL) {
        PyObject *mod = PyImport_ImportModule("warnings");
        warnings_warn = mod ? PyObject_GetAttrString(mod, "warn") : NULL;
        Py_XDECREF(mod);
    }
    PyObject *msg = PyUnicode_FromFormat("%U was never awaited", o->name);
    /* stacklevel 1: a C finalizer has no frame of its own (a Python __del__'s level 2). */
    PyObject *kw = msg ? Py_BuildValue("{sisO}", "stacklevel", 1, "source", (PyObject *)o) : NULL;
    PyObject *a = kw ? PyTuple_Pack(2, msg, PyExc_RuntimeWarning) : NULL;
    PyObject *r = a && warnings_warn ? PyObject_Call(warnings_warn, a, kw) : NULL;
    if (r == NULL)
        PyErr_WriteUnraisable((PyObject *)o); /* a warning turned into an error, as for a coroutine */
    Py_XDECREF(r);
    Py_XDECREF(a);
    Py_XDECREF(kw);
    Py_XDECREF(msg);
    PyErr_Restore(type, value, tb);
}

static void
opening_dealloc(OpeningObj *o)
{
    /* (From a Python subclass's dealloc too: that one has run the finalizer already, which
       runs once, and it releases the subclass itself.) */
    if (PyObject_CallFinalizerFromDealloc((PyObject *)o) < 0)
        return; /* resurrected */
    PyObject_GC_UnTrack(o);
    opening_clear(o);
    Py_CLEAR(o->name);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

/* The coroutine (a borrowed reference), made on first use: factory(*args). */
static PyObject *
opening_started(OpeningObj *o)
{
    if (o->coro != NULL)
        return o->coro;
    PyObject *factory = o->factory;
    if (factory == NULL)
        return PyErr_Format(PyExc_RuntimeError, "cannot reuse a closed <aiopmem.Opening of %U>",
                            o->name);
    o->factory = NULL; /* first: never "never awaited" once the call is under way */
    PyObject *coro = PyObject_Call(factory, o->args, NULL);
    Py_DECREF(factory);
    if (coro == NULL)
        return NULL;
    o->coro = coro;
    return coro;
}

static PyObject *
opening_py_started(OpeningObj *o, PyObject *unused)
{
    (void)unused;
    return Py_XNewRef(opening_started(o));
}

static PyObject *
opening_await(OpeningObj *o)
{
    PyObject *coro = opening_started(o);
    if (coro == NULL)
        return NULL;
    PyAsyncMethods *am = Py_TYPE(coro)->tp_as_async;
    if (am != NULL && am->am_await != NULL)
        return am->am_await(coro);
    return PyObject_CallMethodNoArgs(coro, str_await_);
}

static PyObject *
opening_send(OpeningObj *o, PyObject *value)
{
    PyObject *coro = opening_started(o);
    return coro == NULL ? NULL : PyObject_CallMethodOneArg(coro, str_send, value);
}

static PyObject *
opening_throw(OpeningObj *o, PyObject *args)
{
    PyObject *coro = opening_started(o);
    if (coro == NULL)
        return NULL;
    PyObject *throw = PyObject_GetAttrString(coro, "throw");
    PyObject *r = throw ? PyObject_Call(throw, args, NULL) : NULL;
    Py_XDECREF(throw);
    return r;
}

static PyObject *
opening_close(OpeningObj *o, PyObject *unused)
{
    (void)unused;
    Py_CLEAR(o->factory);
    if (o->coro != NULL) {
        PyObject *r = PyObject_CallMethodNoArgs(o->coro, str_close_);
        if (r == NULL)
            return NULL;
        Py_DECREF(r); /* (None, as the coroutine's close() was) */
    }
    Py_RETURN_NONE;
}

static PyObject *
opening_repr(OpeningObj *o)
{
    return PyUnicode_FromFormat("<aiopmem.Opening of %U>", o->name);
}

static PyAsyncMethods opening_as_async = {
    .am_await = (unaryfunc)opening_await,
};

static PyMethodDef opening_methods[] = {
    {"_started", (PyCFunction)opening_py_started, METH_NOARGS,
     "The coroutine, made on first use (RuntimeError once closed)."},
    {"send", (PyCFunction)opening_send, METH_O, "As the coroutine's send()."},
    {"throw", (PyCFunction)opening_throw, METH_VARARGS, "As the coroutine's throw()."},
    {"close", (PyCFunction)opening_close, METH_NOARGS,
     "Close: never awaited from now on (and the coroutine closed, if made)."},
    {NULL},
};

static PyMemberDef opening_members[] = {
    {"_name", T_OBJECT, offsetof(OpeningObj, name), READONLY, "what opens (for messages)"},
    {NULL},
};

static PyTypeObject OpeningType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.OpeningBase",
    .tp_basicsize = sizeof(OpeningObj),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "OpeningBase(factory, args, name): awaitable over the coroutine factory(*args), "
              "made when first awaited.",
    .tp_new = opening_new,
    .tp_traverse = (traverseproc)opening_traverse,
    .tp_clear = (inquiry)opening_clear,
    .tp_dealloc = (destructor)opening_dealloc,
    .tp_finalize = (destructor)opening_finalize,
    .tp_repr = (reprfunc)opening_repr,
    .tp_as_async = &opening_as_async,
    .tp_methods = opening_methods,
    .tp_members = opening_members,
};
