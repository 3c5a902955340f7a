/* Linux ABI values that older system headers may lack (the kernel features are what count). */
#ifndef AIOPMEM_LINUX_H
#define AIOPMEM_LINUX_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/stat.h>

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef O_PATH
#define O_PATH 010000000
#endif

/* The descriptor check of map_file: fcntl(F_GETFL) + fstat, classified. Returns the file size
   (>= 0) for a readable regular file, -errno when a call fails, or one of the AP_FD_* codes
   (below -4096, so never confused with an errno); the file's device goes to *dev (shared
   mappings consult it to know whether the file system takes MAP_SYNC). Used by the cffi helpers
   and by the C core's jobs alike. */
#define AP_FD_PATH ((int64_t)-10001)
#define AP_FD_WRONLY ((int64_t)-10002)
#define AP_FD_DIR ((int64_t)-10003)
#define AP_FD_NOTREG ((int64_t)-10004)

static inline int64_t
ap_fdcheck_dev(int fd, uint64_t *dev)
{
    struct stat st;
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0)
        return -(int64_t)errno;
    if (fstat(fd, &st))
        return -(int64_t)errno;
    *dev = (uint64_t)st.st_dev;
    if (flags & O_PATH)
        return AP_FD_PATH;
    if ((flags & O_ACCMODE) == O_WRONLY)
        return AP_FD_WRONLY;
    if (S_ISDIR(st.st_mode))
        return AP_FD_DIR;
    if (!S_ISREG(st.st_mode))
        return AP_FD_NOTREG;
    return (int64_t)st.st_size;
}

#endif
