"""Step-time ratios with their spread, measured side by side.

A configuration is timed against an un-probed twin in the same process and at the same time:
two copies of the model (same seed, same data) train in alternating chunks of steps
(:func:`alternate`), so drift on the machine -- another process, the CPU clock, a noisy
neighbour, which on this 2-core machine moves the plain step time by 20% within seconds --
hits both alike. Each block builds a fresh pair, and which copy carries the probe alternates
from block to block, so neither copy's memory layout (worth a few % on its own) is always
the probed one. A ratio is taken within each block (configured time / twin's time) and the
blocks' ratios are summarised by their median and interquartile range: the spread says how
far a figure can be trusted on this machine, and a target like 1.03 is only met when the
range says so. Beside the IQR (how far one block strays) each figure carries a ~95% confidence
interval of the median itself (:func:`median_ci`: from the order statistics, no assumption on
the noise's shape), which narrows as blocks are added: whether a median sits below a target
is told by that interval, and more blocks (``--blocks``) narrow it. The same procedure with nothing attached (an "A/A" pair) shows the method's
own bias and spread, and every benchmark prints it.

    from _ratio import Paired, alternate
    base_s, conf_s = alternate(run_chunk, rounds=4)   # run_chunk(0 or 1) -> seconds of one chunk
    r = Paired.of(times["lossprobe-default"], times["plain"])
    print(r)              # "1.042 (IQR 1.031-1.055; median 95% CI 1.025-1.061, 7 blocks)"
"""
from __future__ import annotations

import math
import os
import statistics
import sys
from dataclasses import dataclass
from typing import Callable

# glibc hands freed heap memory back to the OS and maps it again when a later step needs it (a
# page fault per 4 KB); when it does depends on the order of every allocation in the process.
# Two identical copies of the benchmark CNN ran 17 or 28 ms a step here, with or without a
# probe attached, and the pair's ratio swung between 0.85 and 1.05 with it. Fixed thresholds
# keep the heap mapped (much as jemalloc or tcmalloc do), so the ratios measure the work done,
# not the allocator's timing.
FIXED_MALLOC = {"MALLOC_TRIM_THRESHOLD_": "2147483647", "MALLOC_MMAP_THRESHOLD_": "33554432",
                "MALLOC_TOP_PAD_": "268435456"}
GLIBC_DEFAULT_FLAG = "--glibc-default"


def fixed_malloc() -> None:
    """Re-run this script with :data:`FIXED_MALLOC` in its environment (glibc reads it at
    start), unless it is already there or ``--glibc-default`` asks for the allocator as is.
    Child processes (the Keras and Paddle benchmarks) inherit it."""
    if not sys.platform.startswith("linux") or GLIBC_DEFAULT_FLAG in sys.argv:
        return
    if all(os.environ.get(k) == v for k, v in FIXED_MALLOC.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **FIXED_MALLOC})


def malloc_note() -> str:
    """One line saying how the heap was set for this run."""
    fixed = all(os.environ.get(k) == v for k, v in FIXED_MALLOC.items())
    return ("heap: glibc with fixed trim/mmap thresholds (benchmarks/_ratio.py)" if fixed
            else "heap: glibc defaults (trim and mmap timing in the figures)")


def alternate(run_chunk: Callable[[int], float], rounds: int, warm: int = 2) -> tuple[float, float]:
    """Seconds spent by copy 0 (the twin) and copy 1 (the configured one) over ``rounds``
    chunks each, after ``warm`` untimed chunks each: 0 1 0 1 ..., so every timed chunk
    starts right after a chunk of the other copy and finds the caches the same way. (An order
    that lets a copy follow itself favours whichever copy does so more often: 0 1 1 0 0 1 1 0
    after a warm-up ending in 1 gave the two-conv CNN an A/A ratio of 0.94.)
    ``run_chunk(i)`` trains copy ``i`` for one chunk and returns the seconds it took."""
    for _ in range(warm):
        run_chunk(0)
        run_chunk(1)
    spent = [0.0, 0.0]
    for _ in range(rounds):
        for i in (0, 1):
            spent[i] += run_chunk(i)
    return spent[0], spent[1]


def median_ci(n: int, confidence: float = 0.95) -> tuple[int, int, float]:
    """A distribution-free confidence interval of the median of ``n`` independent values:
    ``(j, k, coverage)`` with the interval from the ``j``-th to the ``k``-th smallest value
    (0-based). It is the widest pair of symmetric order statistics whose outside tails, each a
    Binomial(n, 1/2) tail, still leave at least ``confidence`` (or the whole range, with the
    coverage it has, when ``n`` is too small for that)."""
    # [x_j, x_(n-1-j)] misses the median when at most j values fall below it (or above it)
    cover = lambda j: 1 - 2 * sum(math.comb(n, i) for i in range(j + 1)) / 2 ** n
    j = 0
    while j + 1 <= (n - 1) // 2 and cover(j + 1) >= confidence:
        j += 1
    return j, n - 1 - j, cover(j)


@dataclass(frozen=True)
class Paired:
    median: float
    q1: float
    q3: float
    blocks: int
    lo: float = math.nan   # ~95% confidence interval of the median (median_ci)
    hi: float = math.nan

    @classmethod
    def of(cls, times: list[float], base: list[float]) -> "Paired":
        """Ratios block by block (``times[i] / base[i]``): median and quartiles."""
        return cls.from_ratios([t / b for t, b in zip(times, base) if b > 0])

    @classmethod
    def from_ratios(cls, ratios: list[float]) -> "Paired":
        ratios = sorted(ratios)
        if len(ratios) == 1:
            return cls(ratios[0], ratios[0], ratios[0], 1, ratios[0], ratios[0])
        q = statistics.quantiles(ratios, n=4, method="inclusive")
        j, k, _ = median_ci(len(ratios))
        return cls(statistics.median(ratios), q[0], q[2], len(ratios), ratios[j], ratios[k])

    def __str__(self) -> str:
        coverage = median_ci(self.blocks)[2]
        return (f"{self.median:.3f} (IQR {self.q1:.3f}-{self.q3:.3f}; median {coverage:.0%} CI "
                f"{self.lo:.3f}-{self.hi:.3f}, {self.blocks} blocks)")

    def verdict(self, target: float) -> str:
        """Is the median at most ``target``? "met" / "not met" when the median's confidence
        interval lies wholly on one side, "undecided" when it straddles the target."""
        return "met" if self.hi <= target else "not met" if self.lo > target else "undecided"

    def as_dict(self) -> dict:
        return {"ratio": self.median, "q1": self.q1, "q3": self.q3, "blocks": self.blocks,
                "lo": self.lo, "hi": self.hi}
