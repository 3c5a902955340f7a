/* aiopmem._ffi._core: the state of reservations and mappings, and every transition of it.
 *
 * Why C. A KeyboardInterrupt (raised by a signal handler, or by a trace function) can land
 * between any two Python lines, and inside a `finally` too, so a transition written as several
 * Python lines (admit, claim, mmap, commit, leave) can be torn: counters left wrong, a claim
 * left behind, a mapping made but not recorded. Here each transition is one C call. Python
 * runs only before it (validation, with nothing changed yet) and after it (raising the error a
 * code stands for, or returning the object the call committed, which `mappings()` also
 * reaches). Inside a call no Python code runs while the state is in between: the GIL makes the
 * call atomic to other threads, syscalls are made with the GIL released only where the state
 * says so (a claim, a mapping marked UNMAPPING, an exclusive admission), and allocation, the
 * one thing that can run Python code (a garbage collection and its finalizers), happens before
 * a transition starts or after it ends. A wait for admission is the one place a signal is
 * taken: the wait backs out cleanly first.
 *
 * Contents: the view exporter (Window), fault injection at the syscall seam, the syscalls with
 * their EINTR retry, placement (placeholders, holes), the admission gate, the index of
 * mappings, and the two object bases (ReservationBase, MappingBase) the Python classes of
 * aiopmem.sync extend with validation and documentation.
 *
 * Thread-safety: every entry point runs with the GIL held. The GIL is released only around
 * syscalls and waits, and never while the state is inconsistent.
 */
#define PY_SSIZE_T_CLEAN
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <sys/eventfd.h>

#include "_linux.h"
#include "_exec.h"

typedef unsigned __int128 u128;

static int
as_c_int(PyObject *o)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value out of range for a C int");
        return -1;
    }
    return (int)v;
}

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

/* ========================================================================= syscalls ==== */

/* Each returns 0 or the errno, read right after the call; EINTR (real or injected) is
   retried: none of these calls has a partial effect when interrupted. Called without the GIL. */

static int
sys_mmap_fixed(uint64_t addr, uint64_t length, int prot, int flags, int fd, int64_t offset)
{
    for (;;) {
        int e = inject_check(SC_MMAP);
        if (e == EINTR)
            continue;
        if (e)
            return e;
        void *p = mmap((void *)(uintptr_t)addr, (size_t)length, prot, flags, fd, (off_t)offset);
        if (p == MAP_FAILED) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if ((uintptr_t)p != addr) { /* a kernel before 4.17 took NOREPLACE as a hint */
            munmap(p, (size_t)length);
            return EEXIST;
        }
        return 0;
    }
}

static int
sys_mmap_anywhere(uint64_t length, int prot, int flags, uint64_t *addr)
{
    for (;;) {
        int e = inject_check(SC_MMAP);
        if (e == EINTR)
            continue;
        if (e)
            return e;
        void *p = mmap(NULL, (size_t)length, prot, flags, -1, 0);
        if (p == MAP_FAILED) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        *addr = (uint64_t)(uintptr_t)p;
        return 0;
    }
}

static int
sys_munmap(uint64_t addr, uint64_t length)
{
    for (;;) {
        int e = inject_check(SC_MUNMAP);
        if (e == EINTR)
            continue;
        if (e)
            return e;
        if (munmap((void *)(uintptr_t)addr, (size_t)length) == 0)
            return 0;
        if (errno != EINTR)
            return errno;
    }
}

static int
sys_msync(uint64_t addr, uint64_t length, int flags)
{
    for (;;) {
        int e = inject_check(SC_MSYNC);
        if (e == EINTR)
            continue;
        if (e)
            return e;
        if (msync((void *)(uintptr_t)addr, (size_t)length, flags) == 0)
            return 0;
        if (errno != EINTR)
            return errno;
    }
}

/* ======================================================================== placement ==== */

/* A placeholder: anonymous, private, PROT_NONE, MAP_NORESERVE (see _core/_placement.py). */
#define PH_FLAGS (MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
#define PH_FIXED (PH_FLAGS | MAP_FIXED)
#define PH_NOREPLACE (PH_FLAGS | MAP_FIXED_NOREPLACE)

static uint64_t page_size;
static uint64_t page_mask;

static uint64_t
align_down(uint64_t x)
{
    return x & ~page_mask;
}

/* Lay a placeholder exactly over [addr, addr+length) where nothing is mapped: 0, EEXIST if any
   of it is in use, or the kernel's errno. */
static int
fill_hole(uint64_t addr, uint64_t length)
{
    return sys_mmap_fixed(addr, length, PROT_NONE, PH_NOREPLACE, -1, 0);
}

/* Whether [lo, hi) is entirely mapped (by anything), read from /proc/self/maps. -1 if it
   cannot be read. Used only on failure paths. */
static int
covered(uint64_t lo, uint64_t hi)
{
    FILE *f = fopen("/proc/self/maps", "re");
    if (f == NULL)
        return -1;
    char line[512];
    uint64_t pos = lo;
    int result = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long s, e;
        if (sscanf(line, "%llx-%llx", &s, &e) != 2)
            continue;
        if (s > pos)
            break;
        if (e > pos)
            pos = e;
        if (pos >= hi) {
            result = 1;
            break;
        }
    }
    fclose(f);
    return result;
}

/* Take up to `wanted` bytes of free space at `end` (halving on every refusal, down to none).
   Returns 0 and the amount, or an errno other than EEXIST/ENOMEM. */
static int
take_headroom_after(uint64_t end, uint64_t wanted, uint64_t *got)
{
    u128 room = ((u128)1 << 64) - end;
    uint64_t amount = align_down((u128)wanted < room ? wanted : (uint64_t)(room - 1));
    *got = 0;
    while (amount >= page_size) {
        int e = fill_hole(end, amount);
        if (e == 0) {
            *got = amount;
            return 0;
        }
        if (e != EEXIST && e != ENOMEM)
            return e;
        amount = align_down(amount / 2);
    }
    return 0;
}

/* Of the `got` bytes mapped at *addr, keep the `keep` bytes from the first multiple of `align`
   and give the rest back: 0 (*addr moved there) or munmap's errno (all of it given back). */
static int
trim_to_alignment(uint64_t *addr, uint64_t got, uint64_t align, uint64_t keep)
{
    uint64_t start = *addr, a = (start + align - 1) & ~(align - 1);
    int e = 0;
    if (a > start)
        e = sys_munmap(start, a - start);
    if (!e && a + keep < start + got)
        e = sys_munmap(a + keep, start + got - (a + keep));
    if (e) {
        (void)sys_munmap(start, got);
        return e;
    }
    *addr = a;
    return 0;
}

/* The bytes to map beyond what is kept so that a multiple of `align` can be found in them. */
static uint64_t
alignment_pad(uint64_t align)
{
    return align > page_size ? align - page_size : 0;
}

/* Take `held` bytes anywhere, at a multiple of `align` (0 or a power of two). */
static int
take_range_aligned(uint64_t held, uint64_t align, uint64_t *addr)
{
    uint64_t pad = alignment_pad(align);
    if (held + pad < held)
        return ENOMEM;
    int e = sys_mmap_anywhere(held + pad, PROT_NONE, PH_FLAGS, addr);
    return e || !pad ? e : trim_to_alignment(addr, held + pad, align, held);
}

/* Take `size` bytes anywhere (at a multiple of `align`) plus up to `wanted` of headroom
   behind them. */
static int
take_range_with_headroom(uint64_t size, uint64_t wanted, uint64_t align, uint64_t *addr,
                         uint64_t *held)
{
    uint64_t pad = alignment_pad(align);
    u128 room = ((u128)1 << 64) - page_size - size - pad;
    if ((u128)size + pad >= ((u128)1 << 64) - page_size)
        return ENOMEM;
    uint64_t amount = align_down((u128)wanted < room ? wanted : (uint64_t)room);
    for (;;) {
        int e = take_range_aligned(size + amount, align, addr);
        if (e == 0) {
            *held = size + amount;
            return 0;
        }
        if (e != ENOMEM || amount == 0)
            return e;
        amount = align_down(amount / 2);
        if (amount < page_size)
            amount = 0;
    }
}

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
map_syscalls(MapJob *j)
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
        if (err) /* all or nothing: the access before is put back on what may have changed */
            (void)mprotect((void *)(uintptr_t)s, (size_t)(e - s), j->old_bits);
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

/* Under the GIL; no Python code runs (the references dropped are enum members and the job's
   own). Returns the outcome: 0 (or read()'s bytes) or the errno of a refusal. */
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
        if (j->kind == MEM_PROTECT) {
            PyObject *prot = j->err ? j->old_prot : j->new_prot;
            m->bits = j->err ? j->old_bits : j->arg;
            Py_SETREF(m->protection, Py_NewRef(prot));
            c->version++;
        }
    }
    Py_CLEAR(j->old_prot);
    Py_CLEAR(j->new_prot);
    if (j->has_pb) {
        PyBuffer_Release(&j->pb);
        j->has_pb = 0;
    }
    mem_free_pieces(j);
    leave_shared_waking(c); /* an unmap or a change may wait for the pins */
    if (j->err || j->kind != MEM_READ || j->out == NULL)
        return PyLong_FromLong(j->err);
    return Py_NewRef(j->out);
}

/* Drop what a job that did not begin holds. */
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
    Py_CLEAR(j.out);
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

/* -- jobs of the async API ----------------------------------------------------------------- */

/* An async map, unmap or persist: begun on the caller's thread (the event loop's), its
   syscalls run by the executor (_exec.h) without the GIL, committed on the event loop when its
   port (below) drains. Begin, submission and commit are each one C call, so no interrupt can
   come between a claim and the job that stands for it; a job is never abandoned: its commit
   runs whether or not its caller still waits. */

enum { OP_MAP = 0, OP_UNMAP = 1, OP_MEM = 2 };

typedef struct PortObj PortObj;

typedef struct OpObj {
    PyObject_HEAD
    ExecJob job;
    int op;
    char delivered; /* committed and handed to its waiter (GIL) */
    char committed; /* by the drain, or by the rescue (GIL) */
    double finished_at; /* when the worker listed it (under the port's mutex) */
    Core *core;
    MapObj *m;
    PortObj *port;
    PyObject *waiter;
    PyObject *result; /* after the commit: the mapping, or an int code */
    struct OpObj *next_done;
    union {
        MapJob map;
        UnmapJob unmap;
        MemJob mem;
    } u;
} OpObj;

/* Where the finished jobs of one event loop wait for it: an eventfd the loop watches, written
   only when the list goes from empty to non-empty (one wake-up per batch), and the list. */
struct PortObj {
    PyObject_HEAD
    PyObject *weakreflist;
    struct PortObj *prev_port, *next_port; /* every port, for the rescue (under ports_mu) */
    long inflight; /* jobs started and not drained yet (GIL) */
    int registered; /* in all_ports */
    int flush_scheduled; /* schedule(flush) was called and flush() has not run yet */
    PyObject *schedule;  /* the loop's call_soon (None: wake workers at once) */
    int efd;
    int signaled; /* the eventfd was written since the last drain */
    int held;     /* jobs are listed, their signal held back until their batch ends */
    pthread_mutex_t mu;
    OpObj *head, *tail;
    PyObject *how;
};

static PyTypeObject OpType;
static PyTypeObject PortType;
static PyObject *str_flush;
static int wake_waiter(PyObject *waiter, PyObject *how, PyObject *job);
static int check_how(PyObject *how);

#define OP_OF(j) ((OpObj *)((char *)(j) - offsetof(OpObj, job)))

/* A finished job its event loop has not drained after this long is committed by the rescue
   (the loop is gone, or blocked): the reservation never waits for a loop that stopped. */

static pthread_mutex_t ports_mu = PTHREAD_MUTEX_INITIALIZER;
static PortObj *all_ports;

static void
op_run(ExecJob *job)
{
    OpObj *o = OP_OF(job);
    if (o->op == OP_MAP)
        map_syscalls(&o->u.map);
    else if (o->op == OP_UNMAP)
        unmap_syscalls(&o->u.unmap);
    else
        mem_syscalls(&o->u.mem);
}

/* Write the port's eventfd (its mutex held): the loop will drain. */
static void
port_signal(PortObj *p)
{
    uint64_t one = 1;
    p->signaled = 1;
    p->held = 0;
    while (write(p->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

/* In the worker: append to the port's list, and write the eventfd if the list was empty,
   unless more jobs are queued (`may_hold`): then the signal is held back until the batch ends
   (the executor's release hook), so that the jobs submitted together reach the loop in one
   wake-up. The write is made under the port's mutex: until the drain has taken the job, the
   port cannot go away (the job holds it), and the drain takes the list under the same mutex. */
static int
op_deliver_to(OpObj *o, int may_hold)
{
    PortObj *p = o->port;
    int held = 0;
    pthread_mutex_lock(&p->mu);
    o->next_done = NULL;
    o->finished_at = exec_now();
    if (p->tail)
        p->tail->next_done = o;
    else
        p->head = o;
    p->tail = o;
    if (!p->signaled) {
        if (may_hold && exec_more_queued())
            held = p->held = 1;
        else
            port_signal(p);
    }
    pthread_mutex_unlock(&p->mu);
    return held ? EXEC_HELD : 0;
}

/* The executor asks for a rescue after every delivery (one listed behind another too). */
static int
op_deliver(ExecJob *job)
{
    return op_deliver_to(OP_OF(job), 1);
}

/* The executor's release hook: send every held signal. */
static void
release_held(void)
{
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port) {
        pthread_mutex_lock(&p->mu);
        if (p->held && !p->signaled)
            port_signal(p);
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&ports_mu);
}

/* The executor's reference (taken here) is given back by the drain. Without any worker (none
   could be started), the job runs right here, without the GIL: it still completes. */
static int
op_start(OpObj *o)
{
    PortObj *p = o->port;
    int flush;
    o->job.run = op_run;
    o->job.deliver = op_deliver;
    Py_INCREF(o);
    p->inflight++;
    /* Deferred wake-up only when other jobs of this loop are in flight: a lone job (one
       task) gains nothing from waiting for the flush, a batch saves a wake-up per job. */
    if (exec_submit(&o->job, p->schedule != NULL && p->inflight > 1, &flush) != 0) {
        Py_BEGIN_ALLOW_THREADS
        op_run(&o->job);
        Py_END_ALLOW_THREADS
        (void)op_deliver_to(o, 0);
        return 0;
    }
    if (flush && !p->flush_scheduled) {
        /* The worker is woken once per event-loop iteration, by the port's flush(). */
        p->flush_scheduled = 1;
        PyObject *cb = PyObject_GetAttr((PyObject *)p, str_flush);
        PyObject *r = cb ? PyObject_CallOneArg(p->schedule, cb) : NULL;
        Py_XDECREF(cb);
        if (r == NULL) { /* the job is queued all the same: wake now, report the error */
            p->flush_scheduled = 0;
            exec_flush();
            return -1;
        }
        Py_DECREF(r);
    }
    return 0;
}

/* Commit once (GIL held; whoever comes first: the drain or the rescue). No Python code runs
   and nothing is collected meanwhile: the results are ints or the mapping. */
static void
op_commit(OpObj *o)
{
    if (o->committed)
        return;
    o->committed = 1;
    PyObject *r;
    if (o->op == OP_MAP)
        r = map_commit(o->core, o->m, &o->u.map);
    else if (o->op == OP_UNMAP)
        r = PyLong_FromLong(unmap_commit(o->core, o->m, &o->u.unmap));
    else
        r = mem_commit(o->core, &o->u.mem);
    if (r == NULL) { /* committed all the same; the caller gets MemoryError */
        PyErr_Clear();
        r = Py_NewRef(Py_None);
    }
    o->result = r;
}

/* A new job for `port`, its task's `waiter` kept (allocated before anything is begun). */
static OpObj *
op_new(Core *c, PyObject *port, PyObject *waiter, int op)
{
    if (!PyObject_TypeCheck(port, &PortType)) {
        PyErr_SetString(PyExc_TypeError, "expected a Port");
        return NULL;
    }
    if (((PortObj *)port)->efd < 0) {
        PyErr_SetString(PyExc_ValueError, "the port is closed");
        return NULL;
    }
    OpObj *o = PyObject_GC_New(OpObj, &OpType);
    if (o == NULL)
        return NULL;
    o->op = op;
    o->delivered = o->committed = 0;
    o->finished_at = 0;
    o->core = (Core *)Py_NewRef((PyObject *)c);
    o->m = NULL;
    o->port = (PortObj *)Py_NewRef(port);
    o->waiter = Py_NewRef(waiter);
    o->result = NULL;
    o->next_done = NULL;
    PyObject_GC_Track(o);
    return o;
}

/* The end of a job's begin, `r` and `code` as the begin returned them: the submitted job, or
   the code (nothing begun; the job is dropped). */
static PyObject *
op_begun(OpObj *o, MapObj *m, int r, long code)
{
    if (r <= 0) {
        Py_DECREF(o);
        return r < 0 ? NULL : PyLong_FromLong(code);
    }
    if (o->m == NULL && m != NULL)
        o->m = (MapObj *)Py_NewRef((PyObject *)m);
    if (op_start(o) < 0) { /* started all the same: it completes and is committed */
        Py_DECREF(o);
        return NULL;
    }
    return (PyObject *)o;
}

/* A new job of kind `op` on the mapping args[2] (args: port, waiter, m, ...). */
static OpObj *
op_on_mapping(Core *c, PyObject *const *args, int op, MapObj **m)
{
    *m = as_mapping(c, args[2]);
    return *m == NULL ? NULL : op_new(c, args[0], args[1], op);
}

/* _map_job(port, waiter, cls, offset, length, bits, kind, fd, file_offset, dev, protection,
   sharing, file, check_fd) -> the submitted job, or an int code (nothing begun; C_WOULD_BLOCK:
   the gate would wait, take the blocking path). check_fd: the job checks the descriptor
   first (its outcome is then (C_FILE, the check's result) when it refuses). */
static PyObject *
core_map_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14)
        return PyErr_Format(PyExc_TypeError, "_map_job: bad arguments");
    int check_fd = PyObject_IsTrue(args[13]);
    if (check_fd < 0)
        return NULL;
    OpObj *o = op_new(c, args[0], args[1], OP_MAP);
    if (o == NULL)
        return NULL;
    long long offset;
    long code;
    MapObj *m = map_prepare(c, args + 2, &offset, &o->u.map);
    if (m == NULL) {
        Py_DECREF(o);
        return NULL;
    }
    o->u.map.check_fd = check_fd;
    o->m = m;
    int r = map_begin(c, m, offset, &o->u.map, 0, &code);
    return op_begun(o, m, r, code);
}

/* _unmap_job(port, waiter, m) -> the submitted job, or an int code (0: nothing to do, a busy
   code, C_WOULD_BLOCK). */
static PyObject *
core_unmap_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3)
        return PyErr_Format(PyExc_TypeError, "_unmap_job(port, waiter, m)");
    MapObj *m;
    OpObj *o = op_on_mapping(c, args, OP_UNMAP, &m);
    if (o == NULL)
        return NULL;
    long code;
    int r = unmap_begin(c, m, 0, &o->u.unmap, &code);
    return op_begun(o, m, r, code);
}

/* _mem_job(port, waiter, kind, arg, m or None, lo, hi, need, obj) -> the submitted job, or
   what _mem returns when nothing began (C_WOULD_BLOCK: take the blocking path). */
static PyObject *
core_mem_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9)
        return PyErr_Format(PyExc_TypeError, "_mem_job(port, waiter, kind, arg, m, lo, hi, need, obj)");
    OpObj *o = op_new(c, args[0], args[1], OP_MEM);
    if (o == NULL)
        return NULL;
    MapObj *m;
    int need;
    memset(&o->u.mem, 0, sizeof o->u.mem);
    if (mem_prepare(c, args + 2, &o->u.mem, &m, &need) < 0) {
        Py_DECREF(o);
        return NULL;
    }
    long code;
    uint64_t where = 0;
    int r = mem_begin(c, m, &o->u.mem, need, 0, &code, &where);
    if (r <= 0) {
        Py_DECREF(o);
        return r < 0 ? NULL : mem_refused(code, where);
    }
    return op_begun(o, m, 1, 0);
}

/* _persist_job(port, waiter, m, start, end): _mem_job of a persist. */
static PyObject *
core_persist_job(Core *c, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5)
        return PyErr_Format(PyExc_TypeError, "_persist_job(port, waiter, m, start, end)");
    PyObject *zero = PyLong_FromLong(0);
    if (zero == NULL)
        return NULL;
    PyObject *full[9] = {args[0], args[1], zero, zero, args[2], args[3], args[4], zero, Py_None};
    PyObject *r = core_mem_job(c, full, 9);
    Py_DECREF(zero);
    return r;
}

static int
op_traverse(OpObj *o, visitproc visit, void *arg)
{
    Py_VISIT(o->waiter);
    Py_VISIT(o->result);
    Py_VISIT((PyObject *)o->m);
    Py_VISIT((PyObject *)o->core);
    Py_VISIT((PyObject *)o->port);
    return 0;
}

static int
op_clear(OpObj *o)
{
    /* Only a job the executor no longer holds can be garbage: core, m and port stay for the
       dealloc (a commit needs them, and commits happen before the executor lets go). */
    Py_CLEAR(o->waiter);
    Py_CLEAR(o->result);
    return 0;
}

static void
op_dealloc(OpObj *o)
{
    PyObject_GC_UnTrack(o);
    op_clear(o);
    if (o->op == OP_MEM)
        mem_discard(&o->u.mem);
    Py_XDECREF((PyObject *)o->m);
    Py_XDECREF((PyObject *)o->core);
    Py_XDECREF((PyObject *)o->port);
    PyObject_GC_Del(o);
}

static PyObject *
op_outcome(OpObj *o, PyObject *unused)
{
    (void)unused;
    if (!o->delivered || o->result == NULL)
        return PyErr_Format(PyExc_RuntimeError, "the job is not done");
    if (o->result == Py_None) /* its commit could not make the result */
        return PyErr_NoMemory();
    if (o->op == OP_MAP && PyLong_CheckExact(o->result) && PyLong_AsLong(o->result) == C_FILE)
        return Py_BuildValue("(iL)", C_FILE, (long long)o->u.map.fsize);
    return Py_NewRef(o->result);
}

static PyObject *
op_get_none(OpObj *o, void *unused)
{
    (void)o;
    (void)unused;
    Py_RETURN_NONE;
}

static int
op_set_error(OpObj *o, PyObject *v, void *unused)
{
    (void)o;
    (void)unused;
    if (v != NULL && v != Py_None) {
        PyErr_SetString(PyExc_AttributeError, "a job's outcome is its result");
        return -1;
    }
    return 0;
}

static PyMethodDef op_methods[] = {
    {"outcome", (PyCFunction)op_outcome, METH_NOARGS, "The committed result (once delivered)."},
    {NULL},
};

static PyMemberDef op_members[] = {
    {"waiter", T_OBJECT, offsetof(OpObj, waiter), 0, "the future or task that waits"},
    {"delivered", T_BOOL, offsetof(OpObj, delivered), READONLY,
     "committed and handed to its waiter"},
    {NULL},
};

static PyGetSetDef op_getset[] = {
    {"error", (getter)op_get_none, (setter)op_set_error, "always None (codes are results)",
     NULL},
    {"ticket", (getter)op_get_none, NULL, "always None (a job never waits at the gate)", NULL},
    {NULL},
};

static PyTypeObject OpType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.Job",
    .tp_basicsize = sizeof(OpObj),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One map, unmap or persist of the async API, run by the executor.",
    .tp_traverse = (traverseproc)op_traverse,
    .tp_clear = (inquiry)op_clear,
    .tp_dealloc = (destructor)op_dealloc,
    .tp_methods = op_methods,
    .tp_members = op_members,
    .tp_getset = op_getset,
};

/* -- ports --------------------------------------------------------------------------------- */

static PyObject *
port_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *how, *schedule = Py_None;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Port(how, schedule=None)");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O|O:Port", &how, &schedule) || check_how(how) < 0)
        return NULL;
    if (schedule != Py_None && !PyCallable_Check(schedule)) {
        PyErr_SetString(PyExc_TypeError, "Port: schedule must be callable or None");
        return NULL;
    }
    PortObj *p = (PortObj *)type->tp_alloc(type, 0);
    if (p == NULL)
        return NULL;
    if (schedule != Py_None)
        p->schedule = Py_NewRef(schedule);
    pthread_mutex_init(&p->mu, NULL);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(p);
        return NULL;
    }
    p->how = Py_NewRef(how);
    pthread_mutex_lock(&ports_mu);
    p->next_port = all_ports;
    if (all_ports)
        all_ports->prev_port = p;
    all_ports = p;
    p->registered = 1;
    pthread_mutex_unlock(&ports_mu);
    return (PyObject *)p;
}

static void
port_dealloc(PortObj *p)
{
    /* No job can be listed: each holds a reference to its port. */
    if (p->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)p);
    if (p->registered) {
        pthread_mutex_lock(&ports_mu);
        if (p->prev_port)
            p->prev_port->next_port = p->next_port;
        else if (all_ports == p)
            all_ports = p->next_port;
        if (p->next_port)
            p->next_port->prev_port = p->prev_port;
        pthread_mutex_unlock(&ports_mu);
    }
    if (p->efd >= 0)
        close(p->efd);
    pthread_mutex_destroy(&p->mu);
    Py_XDECREF(p->how);
    Py_XDECREF(p->schedule);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

/* drain(): on the event loop, when the eventfd is readable: commit every finished job (no
   Python code runs meanwhile), then wake each one's task. */
static PyObject *
port_drain(PortObj *p, PyObject *unused)
{
    (void)unused;
    uint64_t v;
    while (read(p->efd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&p->mu);
    OpObj *list = p->head;
    p->head = p->tail = NULL;
    p->signaled = p->held = 0;
    pthread_mutex_unlock(&p->mu);
    for (OpObj *o = list; o; o = o->next_done)
        op_commit(o);
    PyObject *type = NULL, *value = NULL, *tb = NULL;
    for (OpObj *o = list, *next; o; o = next) {
        next = o->next_done;
        o->next_done = NULL;
        o->delivered = 1;
        if (o->waiter != NULL && wake_waiter(o->waiter, p->how, (PyObject *)o) < 0) {
            if (type == NULL)
                PyErr_Fetch(&type, &value, &tb);
            else
                PyErr_WriteUnraisable((PyObject *)p);
        }
        p->inflight--;
        Py_DECREF(o); /* the executor's */
    }
    if (type != NULL) {
        PyErr_Restore(type, value, tb);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
port_fileno(PortObj *p, PyObject *unused)
{
    (void)unused;
    if (p->efd < 0)
        return PyErr_Format(PyExc_ValueError, "the port is closed");
    return PyLong_FromLong(p->efd);
}

/* close(): release the eventfd now (its event loop is done with it); a port with jobs in
   flight keeps it until they are drained... by nobody, so until the port dies. */
static PyObject *
port_close(PortObj *p, PyObject *unused)
{
    (void)unused;
    if (p->efd >= 0 && p->inflight == 0) {
        close(p->efd);
        p->efd = -1;
    }
    Py_RETURN_NONE;
}

/* flush(): the deferred wake-up of the workers for the jobs submitted since the last one. */
static PyObject *
port_flush(PortObj *p, PyObject *unused)
{
    (void)unused;
    p->flush_scheduled = 0;
    exec_flush();
    Py_RETURN_NONE;
}

static PyMethodDef port_methods[] = {
    {"flush", (PyCFunction)port_flush, METH_NOARGS,
     "Wake a worker for the jobs submitted since the last flush (the loop calls it soon)."},
    {"drain", (PyCFunction)port_drain, METH_NOARGS,
     "Commit the finished jobs and wake their tasks (on the port's event loop)."},
    {"fileno", (PyCFunction)port_fileno, METH_NOARGS,
     "The eventfd to watch: readable when finished jobs wait."},
    {"close", (PyCFunction)port_close, METH_NOARGS,
     "Release the eventfd (unless jobs are in flight: then when the port dies)."},
    {NULL},
};

static PyMemberDef port_members[] = {
    {"how", T_OBJECT, offsetof(PortObj, how), READONLY, "how a job's task is woken"},
    {"fd", T_INT, offsetof(PortObj, efd), READONLY, "the eventfd, -1 once closed"},
    {NULL},
};

static PyTypeObject PortType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aiopmem._ffi._core.Port",
    .tp_basicsize = sizeof(PortObj),
    .tp_weaklistoffset = offsetof(PortObj, weakreflist),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Port(how, schedule=None): where one event loop's finished jobs wait for it; "
              "schedule (the loop's call_soon) defers worker wake-ups to one per iteration.",
    .tp_new = port_new,
    .tp_dealloc = (destructor)port_dealloc,
    .tp_methods = port_methods,
    .tp_members = port_members,
};

/* The executor's rescue hook (an idle worker, no GIL): commit the finished jobs that waited
   EXEC_RESCUE_AFTER or longer for their event loop's drain (the loop stopped, or is blocked):
   their admissions and claims are given back whatever becomes of the loop; the loop's drain,
   if it ever comes, then only wakes their tasks. Returns when to look again (0: nothing waits). */
static unsigned long long rescued;

#if PY_VERSION_HEX >= 0x030D0000
#define IS_FINALIZING() Py_IsFinalizing()
#else
#define IS_FINALIZING() _Py_IsFinalizing()
#endif

static double
rescue_ports(void)
{
    double now = exec_now(), oldest = 0;
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port) {
        pthread_mutex_lock(&p->mu);
        for (OpObj *o = p->head; o; o = o->next_done)
            if (!o->committed && (oldest == 0 || o->finished_at < oldest))
                oldest = o->finished_at;
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&ports_mu);
    if (oldest == 0)
        return 0;
    if (now - oldest < EXEC_RESCUE_AFTER)
        return EXEC_RESCUE_AFTER - (now - oldest);
    if (IS_FINALIZING())
        return 0;
    PyGILState_STATE g = PyGILState_Ensure();
    /* Under the GIL no drain runs; a job is committed at most once (its flag). */
    now = exec_now();
    double next = 0;
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port) {
        pthread_mutex_lock(&p->mu);
        for (OpObj *o = p->head; o; o = o->next_done) {
            if (o->committed)
                continue;
            if (now - o->finished_at >= EXEC_RESCUE_AFTER) {
                op_commit(o);
                rescued++;
            }
            else if (next == 0 || EXEC_RESCUE_AFTER - (now - o->finished_at) < next)
                next = EXEC_RESCUE_AFTER - (now - o->finished_at);
        }
        pthread_mutex_unlock(&p->mu);
    }
    pthread_mutex_unlock(&ports_mu);
    PyGILState_Release(g);
    return next;
}

/* fork(): every mutex a worker may hold is taken by the forking thread across the fork, in the
   lock order (ports_mu, each port's, the executor's, dev_mu, inj_mu), so the child's copies
   are consistent and none is held by a thread that does not exist there. */
static void
core_fork_prepare(void)
{
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p; p = p->next_port)
        pthread_mutex_lock(&p->mu);
    exec_fork_prepare();
    pthread_mutex_lock(&dev_mu);
    pthread_mutex_lock(&inj_mu);
}

static void
core_fork_parent(void)
{
    pthread_mutex_unlock(&inj_mu);
    pthread_mutex_unlock(&dev_mu);
    exec_fork_parent();
    for (PortObj *p = all_ports; p; p = p->next_port)
        pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&ports_mu);
}

static void
core_fork_child(void)
{
    pthread_mutex_init(&inj_mu, NULL);
    pthread_mutex_init(&dev_mu, NULL);
    exec_fork_child();
    for (PortObj *p = all_ports; p; p = p->next_port)
        pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&ports_mu, NULL);
}

/* executor_after_fork(): called in a forked child (os.register_at_fork). */
static PyObject *
executor_after_fork(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    int pending = 0;
    pthread_mutex_lock(&ports_mu);
    for (PortObj *p = all_ports; p && !pending; p = p->next_port)
        for (OpObj *o = p->head; o && !pending; o = o->next_done)
            pending = !o->committed;
    pthread_mutex_unlock(&ports_mu);
    int e = exec_after_fork(pending);
    if (e) {
        errno = e;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

/* executor_stats() -> dict of the executor's counters. */
static PyObject *
executor_stats(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    pthread_mutex_lock(&ex.mu);
    long threads = ex.threads, idle = ex.idle, running = ex.running, spare = ex.spare,
         queued = ex.queued, max_workers = ex.max_workers;
    unsigned long long started = ex.started, retired = ex.retired, ran = ex.ran;
    double idle_exit = ex.idle_exit;
    pthread_mutex_unlock(&ex.mu);
    return Py_BuildValue("{slslslslslslsdsKsKsKsK}", "threads", threads, "idle", idle,
                         "running", running, "spare", spare, "queued", queued, "max_workers",
                         max_workers, "idle_exit", idle_exit, "started", started, "retired",
                         retired, "ran", ran, "rescued", rescued);
}

/* executor_configure(max_workers, idle_exit): None leaves a setting as it is. */
static PyObject *
executor_configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2)
        return PyErr_Format(PyExc_TypeError, "executor_configure(max_workers, idle_exit)");
    long n = -1;
    double t = -1;
    if (args[0] != Py_None && ((n = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred()))
        return NULL;
    if (args[1] != Py_None && ((t = PyFloat_AsDouble(args[1])) == -1 && PyErr_Occurred()))
        return NULL;
    if ((args[0] != Py_None && (n < 1 || n > 1024)) ||
        (args[1] != Py_None && !(t > 0 && t <= 86400))) {
        PyErr_SetString(PyExc_ValueError, "max_workers: 1..1024, idle_exit: (0, 86400]");
        return NULL;
    }
    pthread_mutex_lock(&ex.mu);
    if (n > 0)
        ex.max_workers = (int)n;
    if (t > 0)
        ex.idle_exit = t;
    pthread_cond_broadcast(&ex.idle_cv); /* idle ones look at the new deadline */
    pthread_mutex_unlock(&ex.mu);
    Py_RETURN_NONE;
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

/* Release everything except holes (something else may live there now). On a failed munmap:
   the pieces released before it become holes, the mappings in them stay closed, the others
   open again; returns the errno. */
static PyObject *
core_close(Core *c, PyObject *unused)
{
    (void)unused;
    int a = admit_exclusive(c);
    if (a <= 0)
        return a < 0 ? NULL : PyLong_FromLong(0);
    repair_holes(c);
    Py_ssize_t alive = 0;
    FOR_EACH(c, p) {
        Entry *e = ENTRY(c, p);
        if (e->kind == E_MAPPED) {
            Py_ssize_t k = live_of(e->m);
            if (k < 0) {
                leave_exclusive(c);
                return NULL;
            }
            alive += k;
        }
    }
    if (alive) {
        leave_exclusive(c);
        return PyLong_FromSsize_t(C_BUSY_BASE - alive);
    }
    /* What the transition needs is allocated before anything changes: the pieces to release,
       the references to drop, room for the holes a failure would leave. */
    Py_ssize_t np = 0;
    uint64_t (*pieces)[2] = PyMem_RawMalloc((size_t)(c->nholes + 1) * sizeof *pieces);
    MapObj **drop = PyMem_RawMalloc((size_t)(c->n + 1) * sizeof(MapObj *));
    if (pieces == NULL || drop == NULL || index_reserve_n(c, c->nholes + 1) < 0) {
        PyMem_RawFree(pieces);
        PyMem_RawFree(drop);
        leave_exclusive(c);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    uint64_t pos = c->address, end = c->address + c->max_size;
    FOR_EACH(c, p) {
        Entry *e = ENTRY(c, p);
        if (e->kind != E_HOLE)
            continue;
        if (e->start > pos) {
            pieces[np][0] = pos;
            pieces[np][1] = e->start;
            np++;
        }
        pos = e->end;
    }
    if (end > pos) {
        pieces[np][0] = pos;
        pieces[np][1] = end;
        np++;
    }
    FOR_EACH(c, p) {
        Entry *e = ENTRY(c, p);
        if (e->kind == E_MAPPED)
            e->m->state = ST_CLOSED; /* no new view while the memory goes away */
    }
    c->version++;
    Py_ssize_t done = 0, nd = 0;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    for (; done < np; done++) {
        err = sys_munmap(pieces[done][0], pieces[done][1] - pieces[done][0]);
        if (err)
            break;
    }
    Py_END_ALLOW_THREADS
    if (!err) {
        FOR_EACH(c, p) {
            Entry *e = ENTRY(c, p);
            if (e->kind == E_MAPPED)
                drop[nd++] = e->m;
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
                drop[nd++] = m;
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
    for (Py_ssize_t k = 0; k < nd; k++)
        Py_DECREF(drop[k]);
    PyMem_RawFree(drop);
    PyMem_RawFree(pieces);
    return PyLong_FromLong(err);
}

/* -- views --------------------------------------------------------------------------------- */

/* _mview(m, offset, length, readonly) -> memoryview, or C_CLOSED. Ranges checked by Python. */
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
    Prepared p;
    if (view_prepare(&p, (PyObject *)c, m->addr + off, n, readonly) < 0)
        return NULL;
    /* The allocations may have run other code: check again, then register (no allocation
       that can collect happens from here on). */
    if (m->state != ST_OPEN) {
        view_discard(&p);
        return PyLong_FromLong(C_CLOSED);
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

static PyGetSetDef core_getset[] = {
    {"_closed", (getter)core_get_closed, NULL, NULL, NULL},
    {"_count", (getter)core_get_count, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_address", T_ULONGLONG, offsetof(Core, address), READONLY, NULL},
    {"_size", T_ULONGLONG, offsetof(Core, size), READONLY, NULL},
    {"_max_size", T_ULONGLONG, offsetof(Core, max_size), READONLY, NULL},
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
    if (nargs != 6 || !PyType_Check(args[0]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], &CoreType)) {
        PyErr_SetString(PyExc_TypeError, "reserve: bad arguments");
        return NULL;
    }
    int has_addr = args[1] != Py_None, has_limit = args[3] != Py_None;
    unsigned long long want_addr = has_addr ? PyLong_AsUnsignedLongLong(args[1]) : 0;
    unsigned long long n = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long limit = has_limit ? PyLong_AsUnsignedLongLong(args[3]) : 0;
    unsigned long long headroom = PyLong_AsUnsignedLongLong(args[4]);
    unsigned long long align = PyLong_AsUnsignedLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    PyTypeObject *cls = (PyTypeObject *)args[0];
    Core *c = (Core *)cls->tp_alloc(cls, 0);
    if (c == NULL)
        return NULL;
    c->closed = 1; /* until the range is held: a dropped object releases nothing */
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    uint64_t addr = 0, held = has_limit ? (uint64_t)limit : n;
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    if (has_addr) {
        addr = (uint64_t)want_addr;
        err = fill_hole(addr, held);
        if (!err && !has_limit) {
            uint64_t got = 0;
            err = take_headroom_after(addr + n, headroom, &got);
            if (err)
                sys_munmap(addr, n); /* the headroom's failure is the one to report */
            held += got;
        }
    }
    else if (!has_limit)
        err = take_range_with_headroom(n, headroom, align, &addr, &held);
    else
        err = take_range_aligned(held, align, &addr);
    Py_END_ALLOW_THREADS
    if (err) {
        Py_DECREF(c);
        return PyLong_FromLong(err == EEXIST && has_addr ? C_EXISTS : err);
    }
    c->address = addr;
    c->size = n;
    c->max_size = held;
    c->closed = 0;
    return (PyObject *)c;
}

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
   or a callable that takes the job (a port without an event loop). */
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
    if ((PyTuple_Check(how) && PyTuple_GET_SIZE(how) != 2) ||
        (how != Py_None && !PyTuple_Check(how) && !PyCallable_Check(how))) {
        PyErr_SetString(PyExc_TypeError, "port.how: None, (reschedule, Value) or callable");
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

/* =========================================================================== module ==== */

static PyMethodDef module_methods[] = {
    {"new_view", (PyCFunction)(void (*)(void))new_view, METH_FASTCALL,
     "new_view(owner, holders, address, length, readonly) -> memoryview (library use only)"},
    {"live", (PyCFunction)live, METH_O,
     "live(lists) -> number of live windows registered in the lists (dead ones pruned)"},
    {"reserve", (PyCFunction)(void (*)(void))reserve, METH_FASTCALL, NULL},
    {"push", (PyCFunction)inject_push, METH_O, "Activate an injection."},
    {"pop", (PyCFunction)inject_pop, METH_O, "Deactivate an injection."},
    {"intercept", (PyCFunction)intercept, METH_O,
     "intercept(syscall) -> errno to fail with, or 0 (sleeps as injected)"},
    {"set_ticket", (PyCFunction)set_ticket, METH_O, NULL},
    {"submit", (PyCFunction)(void (*)(void))pool_submit, METH_FASTCALL,
     "submit(pool, job): queue a job for the async worker pool (see _async/_workers.py)"},
    {"wake_or_start", (PyCFunction)wake_or_start, METH_O,
     "wake_or_start(pool): one more worker looks at the queue (pool lock held)"},
    {"deliver_all", (PyCFunction)deliver_all, METH_O,
     "deliver_all(port): hand every finished job of the port to its task (on its event loop)"},
    {"executor_after_fork", (PyCFunction)executor_after_fork, METH_NOARGS,
     "executor_after_fork(): in a forked child, a worker for the jobs the fork interrupted"},
    {"executor_stats", (PyCFunction)executor_stats, METH_NOARGS,
     "executor_stats() -> the executor's counters (threads, idle, running, ...)"},
    {"executor_configure", (PyCFunction)(void (*)(void))executor_configure, METH_FASTCALL,
     "executor_configure(max_workers, idle_exit): None keeps a setting"},
    {"open_path", (PyCFunction)(void (*)(void))open_path, METH_FASTCALL,
     "open_path(path, flags) -> OwnedFd (O_CLOEXEC; closed when it dies)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, "_core", "State and transitions of aiopmem reservations.", -1,
    module_methods,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    page_size = (uint64_t)sysconf(_SC_PAGESIZE);
    page_mask = page_size - 1;
    if (PyType_Ready(&WindowType) < 0 || PyType_Ready(&InjectionType) < 0 ||
        PyType_Ready(&CoreType) < 0 || PyType_Ready(&MapType) < 0 ||
        PyType_Ready(&TicketType) < 0 || PyType_Ready(&OwnedFdType) < 0 ||
        PyType_Ready(&OpType) < 0 || PyType_Ready(&PortType) < 0)
        return NULL;
    str_extend_checked = PyUnicode_InternFromString("_extend_checked");
    str_extend_failed = PyUnicode_InternFromString("_extend_failed");
    str_shrink_checked = PyUnicode_InternFromString("_shrink_checked");
    str_shrink_failed = PyUnicode_InternFromString("_shrink_failed");
    if (!str_extend_checked || !str_extend_failed || !str_shrink_checked || !str_shrink_failed)
        return NULL;
    str_flush = PyUnicode_InternFromString("flush");
    if (str_flush == NULL)
        return NULL;
    str_done = PyUnicode_InternFromString("done");
    str_set_result = PyUnicode_InternFromString("set_result");
    if (str_done == NULL || str_set_result == NULL)
        return NULL;
    exec_init();
    ex.rescue = rescue_ports;
    ex.release = release_held;
    pthread_atfork(core_fork_prepare, core_fork_parent, core_fork_child);
    PyObject *mod = PyModule_Create(&core_module);
    if (mod == NULL)
        return NULL;
    AbandonedError = PyErr_NewExceptionWithDoc(
        "aiopmem._ffi._core.Abandoned",
        "The caller of an operation waiting for its turn was cancelled: it did not start.",
        PyExc_Exception, NULL);
    if (AbandonedError == NULL || PyModule_AddObjectRef(mod, "Abandoned", AbandonedError) < 0 ||
        PyModule_AddObjectRef(mod, "InjectionBase", (PyObject *)&InjectionType) < 0 ||
        PyModule_AddObjectRef(mod, "ReservationBase", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObjectRef(mod, "MappingBase", (PyObject *)&MapType) < 0 ||
        PyModule_AddObjectRef(mod, "Ticket", (PyObject *)&TicketType) < 0 ||
        PyModule_AddObjectRef(mod, "OwnedFd", (PyObject *)&OwnedFdType) < 0 ||
        PyModule_AddObjectRef(mod, "Job", (PyObject *)&OpType) < 0 ||
        PyModule_AddObjectRef(mod, "Port", (PyObject *)&PortType) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    static const struct {
        const char *name;
        long value;
    } constants[] = {
        {"SC_MMAP", SC_MMAP}, {"SC_MUNMAP", SC_MUNMAP}, {"SC_MSYNC", SC_MSYNC},
        {"SC_MADVISE", SC_MADVISE}, {"SC_OPEN", SC_OPEN}, {"SC_FSTAT", SC_FSTAT},
        {"C_CLOSED", C_CLOSED}, {"C_OFF_UNALIGNED", C_OFF_UNALIGNED},
        {"C_OFF_NEGATIVE", C_OFF_NEGATIVE}, {"C_NO_FIT", C_NO_FIT}, {"C_EXISTS", C_EXISTS},
        {"C_MID", C_MID}, {"C_WHOLE", C_WHOLE}, {"C_OFF_RANGE", C_OFF_RANGE},
        {"C_LEN_NONPOS", C_LEN_NONPOS}, {"C_LEN_PAST", C_LEN_PAST},
        {"C_NOT_EMPTY", C_NOT_EMPTY}, {"C_PAST_ASPACE", C_PAST_ASPACE},
        {"C_EXTEND_EXISTS", C_EXTEND_EXISTS}, {"C_HOLE_NOTED", C_HOLE_NOTED},
        {"C_BUSY_BASE", C_BUSY_BASE}, {"HOLE_BIT", HOLE_BIT}, {"C_FILE", C_FILE},
        {"C_WOULD_BLOCK", C_WOULD_BLOCK}, {"C_NOACCESS", C_NOACCESS},
        {"SC_MPROTECT", SC_MPROTECT}, {"SC_MLOCK", SC_MLOCK}, {"SC_MUNLOCK", SC_MUNLOCK},
        {"MEM_PERSIST", MEM_PERSIST}, {"MEM_POPULATE", MEM_POPULATE},
        {"MEM_ADVISE", MEM_ADVISE}, {"MEM_LOCK", MEM_LOCK}, {"MEM_UNLOCK", MEM_UNLOCK},
        {"MEM_PROTECT", MEM_PROTECT}, {"MEM_WRITE", MEM_WRITE}, {"MEM_READ", MEM_READ},
        {"MADV_NORMAL", MADV_NORMAL}, {"MADV_RANDOM", MADV_RANDOM},
        {"MADV_SEQUENTIAL", MADV_SEQUENTIAL}, {"MADV_WILLNEED", MADV_WILLNEED},
        {"MADV_DONTNEED", MADV_DONTNEED}, {"MADV_HUGEPAGE", MADV_HUGEPAGE},
        {"MADV_NOHUGEPAGE", MADV_NOHUGEPAGE}, {"MADV_COLD", MADV_COLD},
        {"MADV_PAGEOUT", MADV_PAGEOUT},
        {"ST_OPEN", ST_OPEN}, {"ST_UNMAPPING", ST_UNMAPPING}, {"ST_CLOSED", ST_CLOSED},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++) {
        if (PyModule_AddIntConstant(mod, constants[i].name, constants[i].value) < 0) {
            Py_DECREF(mod);
            return NULL;
        }
    }
    return mod;
}
