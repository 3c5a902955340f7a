"""aiopmem's benchmark suite: ``python -m benchmarks`` (or ``make bench``).

Each figure is measured as several repetitions of a timed loop and reported as
min/median/max over those repetitions. Repetitions of all selected figures are interleaved
(round 1 of every figure, then round 2, ...) so that a ratio between two figures compares
repetitions taken a few seconds apart, not minutes apart on a VM whose speed drifts. See
``benchmarks/README.md`` for what each figure measures and how to read the ratios.

Only aiopmem's public API (``aiopmem``, ``aiopmem.sync``, ``aiopmem.testing``) is used for the
library's figures; the C floor is a C program compiled at run time.
"""
