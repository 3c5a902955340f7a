/* _core_handoff.h: Tickets, owned descriptors (open_path) and the handoff of the Python worker
 * pool. Part of _core.c (included once, in order: one translation unit, every function static).
 */

/* ========================================================================== tickets ==== */

static PyObject *
ticket_abandon(Ticket *t, PyObject *unused)
{
    (void)unused;
    t->abandoned = 1;
    Core *c = t->waiting_on;
    if (c != NULL) {
        pthread_mutex_lock(&c->mu);
        c->gen++;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    Py_RETURN_NONE;
}

static PyMethodDef ticket_methods[] = {
    {"abandon", (PyCFunction)ticket_abandon, METH_NOARGS,
     "Called from the caller's side (an event loop): make the waiting thread give up."},
    {NULL},
};

static PyMemberDef ticket_members[] = {
    {"abandoned", T_INT, offsetof(Ticket, abandoned), READONLY, NULL},
    {NULL},
};

static PyTypeObject TicketType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.Ticket",
    .tp_basicsize = sizeof(Ticket),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What a thread waiting on behalf of an async caller carries.",
    .tp_new = PyType_GenericNew,
    .tp_methods = ticket_methods,
    .tp_members = ticket_members,
};

/* set_ticket(ticket or None): the Ticket of the call this thread runs now. */
static PyObject *
set_ticket(PyObject *module, PyObject *arg)
{
    (void)module;
    if (arg != Py_None && !PyObject_TypeCheck(arg, &TicketType)) {
        PyErr_SetString(PyExc_TypeError, "set_ticket() takes a Ticket or None");
        return NULL;
    }
    PyObject *old = current_ticket;
    if (arg == Py_None)
        current_ticket = NULL;
    else {
        Py_INCREF(arg);
        current_ticket = arg;
    }
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

/* ============================================================================= files ==== */


static PyObject *
owned_close(OwnedFd *o, PyObject *unused)
{
    (void)unused;
    owned_close_fd(o);
    Py_RETURN_NONE;
}

static void
owned_dealloc(OwnedFd *o)
{
    owned_close_fd(o);
    Py_TYPE(o)->tp_free((PyObject *)o);
}

static PyMethodDef owned_methods[] = {
    {"close", (PyCFunction)owned_close, METH_NOARGS, "Close the descriptor (idempotent)."},
    {NULL},
};

static PyMemberDef owned_members[] = {
    {"fd", T_INT, offsetof(OwnedFd, fd), READONLY, "The descriptor, -1 once closed."},
    {NULL},
};

static PyTypeObject OwnedFdType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.OwnedFd",
    .tp_basicsize = sizeof(OwnedFd),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .tp_doc = "A file descriptor the library opened; closed when it dies.",
    .tp_dealloc = (destructor)owned_dealloc,
    .tp_methods = owned_methods,
    .tp_members = owned_members,
};

/* open_path(path, flags) -> OwnedFd: open(2) with O_CLOEXEC, retried on EINTR; OSError (with
   the filename) on failure. The object exists before the descriptor does. */
static PyObject *
open_path(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "open_path(path, flags)");
    int flags = as_c_int(args[1]);
    if (flags == -1 && PyErr_Occurred())
        return NULL;
    PyObject *bytes = NULL;
    if (!PyUnicode_FSConverter(args[0], &bytes))
        return NULL;
    OwnedFd *o = PyObject_New(OwnedFd, &OwnedFdType);
    if (o == NULL) {
        Py_DECREF(bytes);
        return NULL;
    }
    o->fd = -1;
    const char *path = PyBytes_AS_STRING(bytes);
    int fd, err = 0;
    Py_BEGIN_ALLOW_THREADS
    do {
        fd = open(path, flags | O_CLOEXEC);
        err = fd < 0 ? errno : 0;
    } while (fd < 0 && err == EINTR);
    Py_END_ALLOW_THREADS
    Py_DECREF(bytes);
    if (fd < 0) {
        Py_DECREF(o);
        errno = err;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[0]);
    }
    o->fd = fd;
    return (PyObject *)o;
}

/* ==================================================================== async handoff ==== */

/* The two places where the async layer's bookkeeping runs on an event loop's thread: queueing
   a job for the worker pool (_async/_workers.py, _Pool) and handing finished jobs to their
   tasks (Port). Written as Python they hold a threading.Lock across lines, and an interrupt at
   one of those lines (a trace function's or a signal handler's exception) could leave the lock
   held, every later call then hanging. Here each is one C call that runs no Python code of
   the library: it calls methods of the standard objects (the lock, the deque, the condition,
   threading.Thread, the future or trio's reschedule) and sets the pool's fields. The logic is
   the pool's, documented there; the worker threads (which no interrupt reaches) run the rest
   of it in Python. */

static int
get_long_attr(PyObject *o, const char *name, long *out)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (v == NULL)
        return -1;
    *out = PyLong_AsLong(v);
    Py_DECREF(v);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int
set_long_attr(PyObject *o, const char *name, long value)
{
    PyObject *v = PyLong_FromLong(value);
    if (v == NULL)
        return -1;
    int r = PyObject_SetAttrString(o, name, v);
    Py_DECREF(v);
    return r;
}

static int
call_noargs(PyObject *o, const char *method)
{
    PyObject *r = PyObject_CallMethod(o, method, NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* wake_or_start(pool): get one more worker to look at the queue (the pool's lock held): wake
   the idle worker that went idle last (its caches are warm: LIFO, by releasing the newest
   waiter of the idle condition), or start a thread. */
static PyObject *
wake_or_start(PyObject *module, PyObject *pool)
{
    (void)module;
    long idle, threads, max_workers;
    if (get_long_attr(pool, "_idle", &idle) < 0 || get_long_attr(pool, "_threads", &threads) < 0 ||
        get_long_attr(pool, "_max_workers", &max_workers) < 0)
        return NULL;
    if (idle) {
        PyObject *cond = PyObject_GetAttrString(pool, "_idle_cond");
        PyObject *waiters = cond ? PyObject_GetAttrString(cond, "_waiters") : NULL;
        Py_XDECREF(cond);
        if (waiters == NULL)
            return NULL;
        for (;;) {
            Py_ssize_t n = PyObject_Length(waiters);
            if (n <= 0)
                break;
            PyObject *w = PyObject_CallMethod(waiters, "pop", NULL);
            if (w == NULL) {
                Py_DECREF(waiters);
                return NULL;
            }
            PyObject *r = PyObject_CallMethod(w, "release", NULL);
            Py_DECREF(w);
            if (r != NULL) {
                Py_DECREF(r);
                break;
            }
            if (!PyErr_ExceptionMatches(PyExc_RuntimeError)) { /* not "released by a timeout" */
                Py_DECREF(waiters);
                return NULL;
            }
            PyErr_Clear();
        }
        Py_DECREF(waiters);
        if (PyObject_SetAttrString(pool, "_waking", Py_True) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (threads >= max_workers)
        Py_RETURN_NONE;
    PyObject *names = PyObject_GetAttrString(pool, "_names");
    PyObject *number = names ? PyIter_Next(names) : NULL;
    Py_XDECREF(names);
    if (number == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_RuntimeError, "no worker name");
    PyObject *name = PyUnicode_FromFormat("aiopmem-worker-%S", number);
    Py_DECREF(number);
    PyObject *factory = name ? PyObject_GetAttrString(pool, "_thread_type") : NULL;
    PyObject *target = factory ? PyObject_GetAttrString(pool, "_work") : NULL;
    PyObject *kw = target ? Py_BuildValue("{sOsOsO}", "target", target, "name", name, "daemon",
                                          Py_True)
                          : NULL;
    PyObject *empty = kw ? PyTuple_New(0) : NULL;
    PyObject *thread = empty ? PyObject_Call(factory, empty, kw) : NULL;
    Py_XDECREF(empty);
    Py_XDECREF(kw);
    Py_XDECREF(target);
    Py_XDECREF(factory);
    Py_XDECREF(name);
    if (thread == NULL || set_long_attr(pool, "_threads", threads + 1) < 0) {
        Py_XDECREF(thread);
        return NULL;
    }
    if (call_noargs(thread, "start") < 0) { /* e.g. "can't start new thread": no phantom */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        set_long_attr(pool, "_threads", threads);
        PyErr_Restore(type, value, tb);
        Py_DECREF(thread);
        return NULL;
    }
    Py_DECREF(thread);
    Py_RETURN_NONE;
}

/* Remove a job submit() queued but cannot hand to a worker, keeping the error being raised. */
static void
take_back(PyObject *queue, PyObject *job)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    Py_XDECREF(PyObject_CallMethod(queue, "remove", "O", job));
    PyErr_Clear();
    PyErr_Restore(type, value, tb);
}

/* submit(pool, job): queue the job and make sure a worker will look at it. */
static PyObject *
pool_submit(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "submit(pool, job)");
    PyObject *pool = args[0], *job = args[1];
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    PyObject *now = PyFloat_FromDouble((double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    if (now == NULL || PyObject_SetAttrString(job, "submitted", now) < 0) {
        Py_XDECREF(now);
        return NULL;
    }
    Py_DECREF(now);
    PyObject *lock = PyObject_GetAttrString(pool, "_lock");
    if (lock == NULL || call_noargs(lock, "acquire") < 0) {
        Py_XDECREF(lock);
        return NULL;
    }
    /* From here the lock is held: every path below releases it. */
    PyObject *queue = PyObject_GetAttrString(pool, "_queue"), *result = NULL;
    long threads, running, idle, spare;
    int waking = -1;
    if (queue == NULL)
        goto out;
    PyObject *r = PyObject_CallMethod(queue, "append", "O", job);
    if (r == NULL)
        goto out;
    Py_DECREF(r);
    PyObject *w = PyObject_GetAttrString(pool, "_waking");
    if (w != NULL) {
        waking = PyObject_IsTrue(w);
        Py_DECREF(w);
    }
    if (waking < 0 || get_long_attr(pool, "_threads", &threads) < 0 ||
        get_long_attr(pool, "_running", &running) < 0 || get_long_attr(pool, "_idle", &idle) < 0 ||
        get_long_attr(pool, "_spare", &spare) < 0) {
        /* the job is queued, but nobody may know: take it back */
        take_back(queue, job);
        goto out;
    }
    if (waking || threads > running + idle + spare) { /* a worker is about to look */
        result = Py_None;
        goto out;
    }
    if (running) { /* it takes the job when done; a spare must watch in case it is slow */
        if (spare) {
            result = Py_None;
            goto out;
        }
    }
    else if (spare) {
        PyObject *cond = PyObject_GetAttrString(pool, "_spare_cond");
        int ok = cond != NULL && call_noargs(cond, "notify") == 0;
        Py_XDECREF(cond);
        if (ok && PyObject_SetAttrString(pool, "_waking", Py_True) == 0)
            result = Py_None;
        goto out;
    }
    PyObject *started = wake_or_start(module, pool);
    if (started != NULL) {
        Py_DECREF(started);
        result = Py_None;
    }
    else if (running) { /* a running worker takes the job when done; only the spare is missing */
        PyErr_Clear();
        result = Py_None;
    }
    else { /* no worker at all: the job would never run */
        take_back(queue, job);
    }
out:
    Py_XDECREF(queue);
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *rel = PyObject_CallMethod(lock, "release", NULL);
        Py_XDECREF(rel);
        if (rel == NULL)
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(lock);
    if (result == NULL)
        return NULL;
    Py_RETURN_NONE;
}

/* Wake the task that waits for a finished job: `how` is None for an asyncio future (set its
   result unless it is done: a cancelled waiter re-waits), (reschedule, Value) for a trio task,
   or a callable that takes the job (a port without an event loop). (A C port's ("trio", ...)
   and "job" are its drain's own: see port_drain.) */
static PyObject *str_done, *str_set_result;

static int
wake_waiter(PyObject *waiter, PyObject *how, PyObject *job)
{
    if (how != Py_None && !PyTuple_Check(how)) {
        PyObject *r = PyObject_CallOneArg(how, job);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    if (how == Py_None) {
        PyObject *d = PyObject_CallMethodNoArgs(waiter, str_done);
        int done = d == NULL ? -1 : PyObject_IsTrue(d);
        Py_XDECREF(d);
        if (done != 0)
            return done < 0 ? -1 : 0;
        PyObject *r = PyObject_CallMethodOneArg(waiter, str_set_result, Py_None);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    PyObject *value = PyObject_CallOneArg(PyTuple_GET_ITEM(how, 1), Py_None);
    PyObject *r = NULL;
    if (value != NULL)
        r = PyObject_CallFunctionObjArgs(PyTuple_GET_ITEM(how, 0), waiter, value, NULL);
    Py_XDECREF(value);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static int
check_how(PyObject *how)
{
    if (PyUnicode_Check(how)) {
        if (PyUnicode_CompareWithASCIIString(how, "job") == 0)
            return 0;
        PyErr_SetString(PyExc_ValueError, "port.how: the only string is \"job\"");
        return -1;
    }
    if (PyTuple_Check(how) && PyTuple_GET_SIZE(how) == 4) {
        PyObject *tag = PyTuple_GET_ITEM(how, 0);
        if (PyUnicode_Check(tag) && PyUnicode_CompareWithASCIIString(tag, "trio") == 0 &&
            PyCallable_Check(PyTuple_GET_ITEM(how, 1)))
            return 0;
    }
    if ((PyTuple_Check(how) && PyTuple_GET_SIZE(how) != 2) ||
        (how != Py_None && !PyTuple_Check(how) && !PyCallable_Check(how))) {
        PyErr_SetString(PyExc_TypeError, "port.how: None, (reschedule, Value), (\"trio\", "
                                         "reschedule, wait, yield) or callable");
        return -1;
    }
    return 0;
}

/* Hand one finished job of the Python pool to its task. */
static int
deliver_one(PyObject *job, PyObject *how)
{
    if (PyObject_SetAttrString(job, "delivered", Py_True) < 0)
        return -1;
    PyObject *waiter = PyObject_GetAttrString(job, "waiter");
    if (waiter == NULL)
        return -1;
    int rc = wake_waiter(waiter, how, job);
    Py_DECREF(waiter);
    return rc;
}

/* deliver_all(port): runs on the event loop: hand every finished job to its task. */
static PyObject *
deliver_all(PyObject *module, PyObject *port)
{
    (void)module;
    PyObject *lock = PyObject_GetAttrString(port, "lock");
    if (lock == NULL || call_noargs(lock, "acquire") < 0) {
        Py_XDECREF(lock);
        return NULL;
    }
    int set = PyObject_SetAttrString(port, "pending", Py_False);
    PyObject *rel = PyObject_CallMethod(lock, "release", NULL);
    Py_DECREF(lock);
    if (set < 0 || rel == NULL) {
        Py_XDECREF(rel);
        return NULL;
    }
    Py_DECREF(rel);
    PyObject *done = PyObject_GetAttrString(port, "done");
    PyObject *how = done ? PyObject_GetAttrString(port, "how") : NULL;
    if (how != NULL && (PyUnicode_Check(how) || (PyTuple_Check(how) && PyTuple_GET_SIZE(how) == 4))) {
        PyErr_SetString(PyExc_TypeError, "deliver_all: the how of a C port");
        Py_CLEAR(how);
    }
    if (how == NULL || check_how(how) < 0) {
        Py_XDECREF(how);
        Py_XDECREF(done);
        return NULL;
    }
    int rc = 0;
    while (rc == 0 && PyObject_Length(done) > 0) {
        PyObject *job = PyObject_CallMethod(done, "popleft", NULL);
        if (job == NULL) {
            rc = -1;
            break;
        }
        rc = deliver_one(job, how);
        Py_DECREF(job);
    }
    Py_DECREF(how);
    Py_DECREF(done);
    if (rc < 0)
        return NULL; /* what is left is delivered with the next finished job */
    Py_RETURN_NONE;
}
