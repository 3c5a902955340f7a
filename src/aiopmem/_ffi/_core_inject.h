/* _core_inject.h: Fault and latency injection at the syscall seam (aiopmem.testing.inject). Part
 * of _core.c (included once, in order: one translation unit, every function static).
 */

/* ======================================================================== injection ==== */

/* aiopmem.testing.inject: each syscall the library makes first offers itself to the active
 * injections of its kind, innermost first; the first one past its `after` count with `times`
 * left takes it (sleeps `delay` seconds, then fails with `err`, or lets the call run when err
 * is 0). The registry is read without the GIL (syscalls run without it) under inj_mu; an
 * Injection is referenced by the registry while pushed, and a caller copies what it needs
 * under the mutex, so nothing touches an Injection after it is popped. */
enum {
    SC_MMAP,
    SC_MUNMAP,
    SC_MSYNC,
    SC_MADVISE,
    SC_OPEN,
    SC_FSTAT,
    SC_MPROTECT,
    SC_MLOCK,
    SC_MUNLOCK,
    SC_COUNT
};
#define INJ_DEPTH 64

typedef struct {
    PyObject_HEAD
    int sc;
    int err;
    double delay;
    long long after, times, seen, fired;
} Injection;

static pthread_mutex_t inj_mu = PTHREAD_MUTEX_INITIALIZER;
static Injection *inj_stack[SC_COUNT][INJ_DEPTH];
static int inj_depth[SC_COUNT];
static volatile int inj_active;

static int
injection_init(Injection *self, PyObject *args, PyObject *kw)
{
    static char *names[] = {"sc", "err", "delay", "after", "times", NULL};
    int sc, err;
    double delay;
    long long after, times;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iidLL", names, &sc, &err, &delay, &after,
                                     &times))
        return -1;
    if (sc < 0 || sc >= SC_COUNT || err < 0 || delay < 0 || after < 0 || times < 0) {
        PyErr_SetString(PyExc_ValueError, "bad injection");
        return -1;
    }
    self->sc = sc;
    self->err = err;
    self->delay = delay;
    self->after = after;
    self->times = times;
    self->seen = self->fired = 0;
    return 0;
}

static PyMemberDef injection_members[] = {
    {"delay", T_DOUBLE, offsetof(Injection, delay), READONLY, "seconds each call sleeps"},
    {"after", T_LONGLONG, offsetof(Injection, after), READONLY, "calls let through first"},
    {"times", T_LONGLONG, offsetof(Injection, times), READONLY, "calls changed at most"},
    {"seen", T_LONGLONG, offsetof(Injection, seen), READONLY,
     "calls of the syscall offered to this injection (skipped ones included)"},
    {"fired", T_LONGLONG, offsetof(Injection, fired), READONLY,
     "calls this injection delayed or failed"},
    {NULL},
};

static PyTypeObject InjectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.InjectionBase",
    .tp_basicsize = sizeof(Injection),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "One injection's settings and counters (see aiopmem.testing.inject).",
    .tp_init = (initproc)injection_init,
    .tp_new = PyType_GenericNew,
    .tp_members = injection_members,
};

static PyObject *
inject_push(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyObject_TypeCheck(arg, &InjectionType)) {
        PyErr_SetString(PyExc_TypeError, "push() takes an Injection");
        return NULL;
    }
    Injection *inj = (Injection *)arg;
    int full;
    pthread_mutex_lock(&inj_mu);
    full = inj_depth[inj->sc] >= INJ_DEPTH;
    if (!full) {
        Py_INCREF(arg);
        inj_stack[inj->sc][inj_depth[inj->sc]++] = inj;
        inj_active++;
    }
    pthread_mutex_unlock(&inj_mu);
    if (full) {
        PyErr_SetString(PyExc_RuntimeError, "too many nested injections of one syscall");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
inject_pop(PyObject *module, PyObject *arg)
{
    (void)module;
    if (!PyObject_TypeCheck(arg, &InjectionType)) {
        PyErr_SetString(PyExc_TypeError, "pop() takes an Injection");
        return NULL;
    }
    Injection *inj = (Injection *)arg;
    int found = 0;
    pthread_mutex_lock(&inj_mu);
    int sc = inj->sc, n = inj_depth[sc];
    for (int i = n - 1; i >= 0; i--) {
        if (inj_stack[sc][i] == inj) {
            memmove(&inj_stack[sc][i], &inj_stack[sc][i + 1], (size_t)(n - 1 - i) * sizeof(void *));
            inj_depth[sc]--;
            inj_active--;
            found = 1;
            break;
        }
    }
    pthread_mutex_unlock(&inj_mu);
    if (found)
        Py_DECREF(arg);
    Py_RETURN_NONE;
}

static void
sleep_seconds(double s)
{
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) && errno == EINTR)
        ;
}

/* Offer one call of `sc` to the injections (GIL not needed, not held while sleeping): 0 to
   make the call, or the errno to fail it with (EINTR: the caller retries, as for a real one). */
static int
inject_check(int sc)
{
    if (!inj_active)
        return 0;
    double delay = 0;
    int err = 0, chosen = 0;
    pthread_mutex_lock(&inj_mu);
    for (int i = inj_depth[sc] - 1; i >= 0; i--) {
        Injection *inj = inj_stack[sc][i];
        inj->seen++;
        if (inj->seen > inj->after && inj->fired < inj->times) {
            inj->fired++;
            delay = inj->delay;
            err = inj->err;
            chosen = 1;
            break;
        }
    }
    pthread_mutex_unlock(&inj_mu);
    if (chosen && delay > 0)
        sleep_seconds(delay);
    return err;
}

/* intercept(sc) -> errno or 0: the seam for syscalls made from Python (open, fstat). */
static PyObject *
intercept(PyObject *module, PyObject *arg)
{
    (void)module;
    int sc = as_c_int(arg);
    if (sc == -1 && PyErr_Occurred())
        return NULL;
    if (sc < 0 || sc >= SC_COUNT) {
        PyErr_SetString(PyExc_ValueError, "unknown syscall");
        return NULL;
    }
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = inject_check(sc);
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(err);
}
