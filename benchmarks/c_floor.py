"""Figure 1: the C floor, what the kernel alone costs for one map+unmap of a 64 KiB file region
over a placeholder. Every map/unmap figure of the library is compared with it."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Final

from ._measure import SLOT, Figure, Metric, calibrate

#: The program. One op is exactly the two syscalls a map+unmap inside a reservation needs:
#: the file region replaces the PROT_NONE placeholder (MAP_FIXED), then a placeholder with the
#: library's placeholder flags replaces the file region. A short untimed warm-up comes first.
C_SOURCE: Final = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LEN ((size_t)SLOT_BYTES) /* -DSLOT_BYTES=65536 on the command line */
#define PLACEHOLDER (MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)

static int op(void *addr, int fd) {
    if (mmap(addr, LEN, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_SHARED, fd, 0) != addr)
        return -1;
    if (mmap(addr, LEN, PROT_NONE, PLACEHOLDER, -1, 0) != addr)
        return -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s FILE N\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    int fd = open(argv[1], O_RDWR | O_CLOEXEC);
    if (fd < 0) { perror("open"); return 1; }
    void *addr = mmap(NULL, LEN, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (addr == MAP_FAILED) { perror("mmap placeholder"); return 1; }
    for (long i = 0; i < 100; i++)
        if (op(addr, fd)) { perror("mmap"); return 1; }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++)
        if (op(addr, fd)) { perror("mmap"); return 1; }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("%.3f %ld %.9f\n", (double)n / s, n, s);
    return 0;
}
"""


def find_compiler() -> str:
    """``$CC`` if set, else ``cc``, else ``gcc`` (the system compiler)."""
    for candidate in (os.environ.get("CC"), "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return candidate
    raise RuntimeError("no C compiler found ($CC, cc or gcc): the C floor cannot be measured")


def build(directory: str, name: str, source: str, *args: str) -> tuple[str, str]:
    """Write ``source`` to ``directory/name.c`` and compile it at -O2 with the system compiler
    (``args``: more compiler arguments, libraries last); returns the executable's path and the
    compiler's version line. ``subprocess.CalledProcessError`` (with its stderr) if it fails."""
    cc = find_compiler()
    src = os.path.join(directory, f"{name}.c")
    exe = os.path.join(directory, name)
    with open(src, "w") as f:
        f.write(source)
    subprocess.run(
        [cc, "-O2", f"-DSLOT_BYTES={SLOT}", "-o", exe, src, *args],
        check=True,
        capture_output=True,
        text=True,
    )
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    return exe, (version.stdout.splitlines() or [cc])[0]


def run_program(exe: str, *args: str) -> tuple[float, float]:
    """(ops/s, seconds) as printed ("OPS N SECONDS") by one run of a program from ``build``."""
    out = subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[2])


class CFloor(Figure):
    """A C program, written to the scratch directory and compiled with the system compiler at
    -O2, times N ops of mmap(addr, 64 KiB, PROT_READ|PROT_WRITE, MAP_FIXED|MAP_SHARED, fd, 0)
    over a PROT_NONE placeholder followed by mmap(addr, 64 KiB, PROT_NONE,
    MAP_FIXED|MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0) back, and prints ops/s; each
    repetition is one run of it as a subprocess (same 64 KiB file as the library figures)."""

    name = "c_floor"
    title = "C floor: mmap file over placeholder + placeholder back (64 KiB)"

    @property
    def metrics(self) -> list[Metric]:
        return [
            Metric("ops_per_s", "map+unmap", "ops/s"),
            Metric("us_per_op", "map+unmap", "µs/op"),
        ]

    def prepare(self) -> None:
        self.exe, self.params["compiler"] = build(self.ctx.scratch.directory, "c_floor", C_SOURCE)
        self.n = calibrate(lambda n: self._run(n)[1], self.profile.rep_seconds)
        self.params["ops_per_rep"] = self.n

    def _run(self, n: int) -> tuple[float, float]:
        return run_program(self.exe, self.ctx.scratch.slot_path, str(n))

    def run_rep(self, rep: int) -> dict[str, float]:
        ops, _ = self._run(self.n)
        return {"ops_per_s": ops, "us_per_op": 1e6 / ops}
