"""The real libpmem2, side by side: map+delete of the same 64 KiB file region into a
reservation, and an extend+shrink pair, timed by a C program compiled at run time against the
system's libpmem2 (Debian: libpmem2; the program declares the few prototypes it uses). Without
it the figure is skipped with a one-line reason."""

from __future__ import annotations

import ctypes.util
import subprocess
from typing import Final

from ._measure import Figure, Metric, Unavailable, calibrate
from .c_floor import build, run_program

#: The program: ``libpmem2_bench FILE N map|extent`` prints ops/s, N, seconds.
#: map: pmem2_map_new + pmem2_map_delete of the 64 KiB file region at offset 0 of a 1 GiB
#: reservation (libpmem2's own calls: source from the fd, a config with the reservation set);
#: extent: pmem2_vm_reservation_extend + pmem2_vm_reservation_shrink of 64 KiB at the end of
#: a reservation whose tail was released just before (so that the range behind it is free).
C_SOURCE: Final = r"""
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LEN ((size_t)SLOT_BYTES)

/* libpmem2's prototypes (libpmem2.h, 1.12), declared here so that the runtime library alone
   (Debian: libpmem2) is enough to build this; the structures are opaque. */
struct pmem2_vm_reservation;
struct pmem2_source;
struct pmem2_config;
struct pmem2_map;
#define PMEM2_GRANULARITY_PAGE 2
int pmem2_vm_reservation_new(struct pmem2_vm_reservation **, void *, size_t);
int pmem2_vm_reservation_delete(struct pmem2_vm_reservation **);
int pmem2_vm_reservation_extend(struct pmem2_vm_reservation *, size_t);
int pmem2_vm_reservation_shrink(struct pmem2_vm_reservation *, size_t, size_t);
int pmem2_source_from_fd(struct pmem2_source **, int);
int pmem2_source_delete(struct pmem2_source **);
int pmem2_config_new(struct pmem2_config **);
int pmem2_config_delete(struct pmem2_config **);
int pmem2_config_set_required_store_granularity(struct pmem2_config *, int);
int pmem2_config_set_length(struct pmem2_config *, size_t);
int pmem2_config_set_vm_reservation(struct pmem2_config *, struct pmem2_vm_reservation *, size_t);
int pmem2_map_new(struct pmem2_map **, const struct pmem2_config *, const struct pmem2_source *);
int pmem2_map_delete(struct pmem2_map **);
const char *pmem2_errormsg(void);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, pmem2_errormsg());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s FILE N map|extent\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    struct pmem2_vm_reservation *rsv;
    double t0, t1;
    if (strcmp(argv[3], "map") == 0) {
        int fd = open(argv[1], O_RDWR | O_CLOEXEC);
        if (fd < 0) { perror("open"); return 1; }
        struct pmem2_source *src;
        struct pmem2_config *cfg;
        struct pmem2_map *map;
        if (pmem2_vm_reservation_new(&rsv, NULL, (size_t)1 << 30)) return fail("reservation");
        if (pmem2_source_from_fd(&src, fd)) return fail("source");
        if (pmem2_config_new(&cfg)) return fail("config");
        if (pmem2_config_set_required_store_granularity(cfg, PMEM2_GRANULARITY_PAGE))
            return fail("granularity");
        if (pmem2_config_set_length(cfg, LEN)) return fail("length");
        if (pmem2_config_set_vm_reservation(cfg, rsv, 0)) return fail("vm reservation");
        for (long i = 0; i < 100 + n; i++) {
            if (i == 100) t0 = now();
            if (pmem2_map_new(&map, cfg, src)) return fail("map");
            if (pmem2_map_delete(&map)) return fail("delete");
        }
        t1 = now();
        pmem2_config_delete(&cfg);
        pmem2_source_delete(&src);
        close(fd);
    } else {
        if (pmem2_vm_reservation_new(&rsv, NULL, 2 * LEN)) return fail("reservation");
        if (pmem2_vm_reservation_shrink(rsv, LEN, LEN)) return fail("shrink");
        for (long i = 0; i < 100 + n; i++) {
            if (i == 100) t0 = now();
            if (pmem2_vm_reservation_extend(rsv, LEN)) return fail("extend");
            if (pmem2_vm_reservation_shrink(rsv, LEN, LEN)) return fail("shrink");
        }
        t1 = now();
    }
    if (pmem2_vm_reservation_delete(&rsv)) return fail("reservation delete");
    printf("%.3f %ld %.9f\n", (double)n / (t1 - t0), n, t1 - t0);
    return 0;
}
"""


class Libpmem2(Figure):
    """A C program compiled at run time against the system's libpmem2 times N ops of
    pmem2_map_new + pmem2_map_delete of the 64 KiB file region at offset 0 of a 1 GiB
    reservation (page granularity, the same file as every map/unmap figure), and N pairs of
    pmem2_vm_reservation_extend + pmem2_vm_reservation_shrink of 64 KiB at the end of a
    reservation; each repetition is one run per metric as a subprocess."""

    name = "libpmem2"
    title = "libpmem2 (the system's): map+delete (64 KiB), extend+shrink pair (64 KiB)"

    @property
    def metrics(self) -> list[Metric]:
        return [
            Metric("map_ops_per_s", "map+delete", "ops/s"),
            Metric("extent_pairs_per_s", "extend+shrink", "pairs/s"),
        ]

    def prepare(self) -> None:
        if ctypes.util.find_library("pmem2") is None:
            raise Unavailable("libpmem2 is not installed (Debian: apt-get install libpmem2)")
        try:
            # -l:libpmem2.so.1: the runtime package has no libpmem2.so development link.
            self.exe, _ = build(
                self.ctx.scratch.directory, "libpmem2_bench", C_SOURCE, "-l:libpmem2.so.1"
            )
        except subprocess.CalledProcessError as exc:
            raise Unavailable(
                f"cannot build against libpmem2: {exc.stderr.strip()[:200]}"
            ) from None
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "libpmem2"],
            capture_output=True,
            text=True,
            check=False,
        )
        self.params["libpmem2"] = version.stdout.strip() or "unknown version"
        self.n_map = calibrate(lambda n: self._run(n, "map")[1], self.profile.rep_seconds)
        self.n_extent = calibrate(lambda n: self._run(n, "extent")[1], self.profile.rep_seconds)
        self.params["ops_per_rep"] = {"map": self.n_map, "extent": self.n_extent}

    def _run(self, n: int, what: str) -> tuple[float, float]:
        return run_program(self.exe, self.ctx.scratch.slot_path, str(n), what)

    def run_rep(self, rep: int) -> dict[str, float]:
        return {
            "map_ops_per_s": self._run(self.n_map, "map")[0],
            "extent_pairs_per_s": self._run(self.n_extent, "extent")[0],
        }
