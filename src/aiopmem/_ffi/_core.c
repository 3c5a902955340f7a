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
 * Contents, one file per part, included below in this order (one translation unit):
 *   _core_window.h     the view exporter (Window);
 *   _core_inject.h     fault injection at the syscall seam;
 *   _core_placement.h  the syscalls with their EINTR retry, placement (placeholders, holes,
 *                      headroom, alignment);
 *   _core_state.h      the objects' state, the index of mappings, the admission gate;
 *   _core_map.h        map and unmap (begin, syscalls, commit);
 *   _core_memops.h     memory operations (persist, populate, advise, lock, protect, copies);
 *   _core_extent.h     reserve, extend, shrink, close;
 *   _core_jobs.h       jobs of the async API and the ports of the event loops (the executor
 *                      itself, which knows nothing of Python, is _exec.h);
 *   _core_objects.h    views, lookups, the two object bases (ReservationBase, MappingBase)
 *                      the Python classes of aiopmem.sync extend, and reserve() inline;
 *   _core_handoff.h    tickets, owned descriptors, the Python worker pool's handoff;
 * and the module's own table here.
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

#include "_core_window.h"
#include "_core_inject.h"
#include "_core_placement.h"
#include "_core_state.h"
#include "_core_map.h"
#include "_core_memops.h"
#include "_core_extent.h"
#include "_core_jobs.h"
#include "_core_objects.h"
#include "_core_handoff.h"
#include "_core_opening.h"

/* =========================================================================== module ==== */

static PyMethodDef module_methods[] = {
    {"new_view", (PyCFunction)(void (*)(void))new_view, METH_FASTCALL,
     "new_view(owner, holders, address, length, readonly) -> memoryview (library use only)"},
    {"live", (PyCFunction)live, METH_O,
     "live(lists) -> number of live windows registered in the lists (dead ones pruned)"},
    {"reserve", (PyCFunction)(void (*)(void))reserve, METH_FASTCALL, NULL},
    {"reserve_job", (PyCFunction)(void (*)(void))reserve_job, METH_FASTCALL,
     "reserve_job(port, waiter, cls, address, size, max_size, headroom, alignment) -> Job"},
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
    {"aio_configure", (PyCFunction)(void (*)(void))aio_configure, METH_FASTCALL,
     "aio_configure(get_running_loop, current_task, states, make_port, CancelScope, TaskState): "
     "the asyncio prologue's objects"},
    {"aio_begin", (PyCFunction)(void (*)(void))aio_begin, METH_FASTCALL,
     "aio_begin(begin, args, always) -> the job, a code, or None (the Python path decides)"},
    {"aio_configure_map", (PyCFunction)(void (*)(void))aio_configure_map, METH_FASTCALL,
     "aio_configure_map(cls, Protection, Sharing, SHARED, prot_bits, mask): aio_map_fd's objects"},
    {"aio_map_fd", (PyCFunction)(void (*)(void))aio_map_fd, METH_FASTCALL,
     "aio_map_fd(core, file, offset, length, file_offset, protection, sharing) -> the job, a "
     "code, or None (the Python path)"},
    {"aio_unmap", (PyCFunction)aio_unmap, METH_O,
     "aio_unmap(mapping) -> its unmap job, a code, or None (the Python path decides)"},
    {"aio_cancel_due", (PyCFunction)aio_cancel_due, METH_O,
     "aio_cancel_due(task) -> whether a checkpoint would raise in the asyncio or trio task"},
    {"aio_configure_trio", (PyCFunction)(void (*)(void))aio_configure_trio, METH_FASTCALL,
     "aio_configure_trio(run_context, port_var, make_port, Task, CancelStatus, Runner): trio's "
     "prologue objects"},
    {"executor_configure", (PyCFunction)(void (*)(void))executor_configure, METH_FASTCALL,
     "executor_configure(max_workers, idle_exit, spin=None, wait=None): None keeps a setting"},
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
        PyType_Ready(&OpType) < 0 || PyType_Ready(&PortType) < 0 ||
        PyType_Ready(&OpeningType) < 0)
        return NULL;
    str_extend_checked = PyUnicode_InternFromString("_extend_checked");
    str_extend_failed = PyUnicode_InternFromString("_extend_failed");
    str_shrink_checked = PyUnicode_InternFromString("_shrink_checked");
    str_shrink_failed = PyUnicode_InternFromString("_shrink_failed");
    if (!str_extend_checked || !str_extend_failed || !str_shrink_checked || !str_shrink_failed)
        return NULL;
    str_flush = PyUnicode_InternFromString("flush");
    str_await_ = PyUnicode_InternFromString("__await__");
    small_ints[0] = PyLong_FromLong(0);
    small_ints[1] = PyLong_FromLong(1);
    if (small_ints[0] == NULL || small_ints[1] == NULL)
        return NULL;
    str_send = PyUnicode_InternFromString("send");
    str_close_ = PyUnicode_InternFromString("close");
    if (str_flush == NULL || str_await_ == NULL || str_send == NULL || str_close_ == NULL)
        return NULL;
    str_call_soon = PyUnicode_InternFromString("call_soon");
    str_context = PyUnicode_InternFromString("context");
    if (str_call_soon == NULL || str_context == NULL)
        return NULL;
    str_done = PyUnicode_InternFromString("done");
    str_set_result = PyUnicode_InternFromString("set_result");
    if (str_done == NULL || str_set_result == NULL)
        return NULL;
    exec_init();
    {
        /* AIOPMEM_WAIT_US: the caller's wait for a short job (op_wait), in microseconds (0:
           none; at most 1000). */
        const char *w = getenv("AIOPMEM_WAIT_US");
        double us = w && *w ? atof(w) : WAIT_DEFAULT_US;
        cw.wait = us > 0 ? (us < 1000 ? us : 1000) * 1e-6 : 0;
    }
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
        PyModule_AddObjectRef(mod, "Port", (PyObject *)&PortType) < 0 ||
        PyModule_AddObjectRef(mod, "OpeningBase", (PyObject *)&OpeningType) < 0) {
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
