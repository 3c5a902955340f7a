/* Thin C helpers behind aiopmem._ffi. Each returns 0 or an errno value, read right after the
   failing call, so Python never has to consult a thread's errno later. Pointers travel as
   uintptr_t: Python ints convert to them without building cdata objects on the hot path. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "_linux.h"

static long ap_page_size(void)
{
    return sysconf(_SC_PAGESIZE);
}

/* Map exactly at addr. Kernels before 4.17 ignore MAP_FIXED_NOREPLACE and treat addr as a hint:
   a mapping placed anywhere else is undone and reported as EEXIST, never kept. */
static int ap_mmap_fixed(uintptr_t addr, size_t length, int prot, int flags, int fd,
                         int64_t offset)
{
    void *p = mmap((void *)addr, length, prot, flags, fd, (off_t)offset);
    if (p == MAP_FAILED)
        return errno;
    if ((uintptr_t)p != addr) {
        munmap(p, length);
        return EEXIST;
    }
    return 0;
}

static uintptr_t ap_mmap_anywhere(size_t length, int prot, int flags, int *err)
{
    void *p = mmap(NULL, length, prot, flags, -1, 0);
    if (p == MAP_FAILED) {
        *err = errno;
        return 0;
    }
    *err = 0;
    return (uintptr_t)p;
}

static int ap_munmap(uintptr_t addr, size_t length)
{
    return munmap((void *)addr, length) ? errno : 0;
}

static int ap_msync(uintptr_t addr, size_t length, int flags)
{
    return msync((void *)addr, length, flags) ? errno : 0;
}

static int ap_madvise(uintptr_t addr, size_t length, int advice)
{
    return madvise((void *)addr, length, advice) ? errno : 0;
}

/* The descriptor check of map_file in one crossing (ap_fdcheck_dev, in _linux.h); the device
   of the file is kept per thread for ap_last_dev(). */
static __thread uint64_t ap_dev;

static int64_t ap_fdcheck(int fd)
{
    return ap_fdcheck_dev(fd, &ap_dev);
}

static uint64_t ap_last_dev(void)
{
    return ap_dev;
}
