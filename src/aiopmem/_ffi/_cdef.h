/* Declarations cffi exposes to Python (parsed by cffi, not by a C compiler).
   The constants' values come from the system headers at build time. */

static const int PROT_NONE, PROT_READ, PROT_WRITE, PROT_EXEC;
static const int MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE, MAP_ANONYMOUS;
static const int MAP_FIXED, MAP_FIXED_NOREPLACE, MAP_NORESERVE, MAP_SYNC;
static const int MS_ASYNC, MS_SYNC, MS_INVALIDATE;
static const int MADV_NORMAL, MADV_DONTNEED, MADV_WILLNEED;
static const int O_ACCMODE, O_RDONLY, O_WRONLY, O_RDWR, O_PATH;

long ap_page_size(void);
int ap_mmap_fixed(uintptr_t addr, size_t length, int prot, int flags, int fd, int64_t offset);
uintptr_t ap_mmap_anywhere(size_t length, int prot, int flags, int *err);
int ap_munmap(uintptr_t addr, size_t length);
int ap_msync(uintptr_t addr, size_t length, int flags);
int ap_madvise(uintptr_t addr, size_t length, int advice);
int64_t ap_fdcheck(int fd);
uint64_t ap_last_dev(void);
static const int64_t AP_FD_PATH, AP_FD_WRONLY, AP_FD_DIR, AP_FD_NOTREG;
