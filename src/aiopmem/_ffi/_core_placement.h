/* _core_placement.h: The syscalls (EINTR retried, injectable) and placement: placeholders,
 * holes, headroom, alignment. Part of _core.c (included once, in order: one translation unit,
 * every function static).
 */

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
    if (e) {
        (void)sys_munmap(start, got);
        return e;
    }
    if (a + keep < start + got)
        e = sys_munmap(a + keep, start + got - (a + keep));
    if (e) { /* the head is gone already (and may be someone else's by now) */
        (void)sys_munmap(a, start + got - a);
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
