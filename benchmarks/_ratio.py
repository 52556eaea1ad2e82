"""Step-time ratios with their spread, measured side by side.

A configuration is timed against an un-probed twin in the same process and at the same time:
two copies of the model (same seed, same data) train in alternating chunks of steps
(:func:`alternate`), so drift on the machine -- another process, the CPU clock, a noisy
neighbour, which on this 2-core machine moves the plain step time by 20% within seconds --
hits both alike. Each block builds a fresh pair, and which copy carries the probe alternates
from block to block, so neither copy's memory layout (worth a few % on its own) is always
the probed one.

A ratio is taken for every pair of adjacent chunks (configured chunk / the twin's chunk just
before it): a burst of slowness that hits one chunk spoils one pair, not a block's sum, and the
median over all pairs passes it by. Each figure is that median with the pairs' interquartile
range (how far one pair strays) and a ~95% confidence interval of the median from a block
bootstrap (:meth:`Paired.from_blocks`: whole blocks resampled, since the pairs of one block share
its two model copies). Whether a median sits below a target is told by that interval, and more
blocks (``--blocks``) narrow it. The same procedure with nothing attached (an "A/A" pair) shows
the method's own bias and spread, and every benchmark prints it.

    from _ratio import Paired, alternate
    pairs = alternate(run_chunk, rounds=4)   # run_chunk(0 or 1) -> seconds: [(twin_s, configured_s), ...]
    r = Paired.from_pairs([pairs_of_block_1, pairs_of_block_2, ...])
    print(r)              # "1.042 (IQR 1.031-1.055; median 95% CI 1.035-1.050, 28 pairs in 7 blocks)"
"""
from __future__ import annotations

import os
import random
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


def alternate(run_chunk: Callable[[int], float], rounds: int, warm: int = 2) -> list[tuple[float, float]]:
    """Seconds spent by copy 0 (the twin) and copy 1 (the configured one), a pair of adjacent
    chunks per round, after ``warm`` untimed chunks each: 0 1 0 1 ..., so every timed chunk
    starts right after a chunk of the other copy and finds the caches the same way. (An order
    that lets a copy follow itself favours whichever copy does so more often: 0 1 1 0 0 1 1 0
    after a warm-up ending in 1 gave the two-conv CNN an A/A ratio of 0.94.)
    ``run_chunk(i)`` trains copy ``i`` for one chunk and returns the seconds it took."""
    for _ in range(warm):
        run_chunk(0)
        run_chunk(1)
    return [(run_chunk(0), run_chunk(1)) for _ in range(rounds)]


def pair_ratios(pairs: list[tuple[float, float]]) -> list[float]:
    """Each chunk pair's configured time over its twin's."""
    return [c / t for t, c in pairs if t > 0]


def twin_step(pairs: list[tuple[float, float]], chunk: int) -> float:
    """The twin's seconds per step over ``pairs`` (chunks of ``chunk`` steps)."""
    return sum(t for t, _ in pairs) / (len(pairs) * chunk)


BOOTSTRAP = 2000   # resamples for a confidence interval (seeded: a run's figures are reproducible)
MIN_BLOCKS = 5     # fewer blocks than this: the interval is printed but decides nothing


@dataclass(frozen=True)
class Paired:
    """A median ratio over chunk pairs, their IQR, and the median's ~95% confidence interval."""
    median: float
    q1: float
    q3: float
    pairs: int
    blocks: int
    lo: float
    hi: float

    @classmethod
    def from_blocks(cls, blocks: list[list[float]], resamples: int = BOOTSTRAP) -> "Paired":
        """``blocks``: each block's pair ratios. The interval is the 2.5th-97.5th percentile of
        the median over ``resamples`` resamples of whole blocks (a cluster bootstrap)."""
        blocks = [list(b) for b in blocks if b]
        ratios = sorted(r for b in blocks for r in b)
        if len(ratios) == 1:
            return cls(ratios[0], ratios[0], ratios[0], 1, 1, ratios[0], ratios[0])
        q = statistics.quantiles(ratios, n=4, method="inclusive")
        rng = random.Random(0)
        medians = sorted(statistics.median([r for b in rng.choices(blocks, k=len(blocks)) for r in b])
                         for _ in range(resamples))
        lo, hi = medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]
        return cls(statistics.median(ratios), q[0], q[2], len(ratios), len(blocks), lo, hi)

    @classmethod
    def from_pairs(cls, blocks: list[list[tuple[float, float]]]) -> "Paired":
        """From each block's ``(twin seconds, configured seconds)`` chunk pairs."""
        return cls.from_blocks([pair_ratios(b) for b in blocks])

    def __str__(self) -> str:
        rough = "" if self.blocks >= MIN_BLOCKS else ", too few blocks for an interval"
        return (f"{self.median:.3f} (IQR {self.q1:.3f}-{self.q3:.3f}; median 95% CI "
                f"{self.lo:.3f}-{self.hi:.3f}, {self.pairs} pairs in {self.blocks} blocks{rough})")

    def verdict(self, target: float) -> str:
        """Is the median at most ``target``? "met" / "not met" when the median's confidence
        interval lies wholly on one side, "undecided" when it straddles the target or the
        blocks are too few to tell."""
        if self.blocks < MIN_BLOCKS:
            return "undecided"
        return "met" if self.hi <= target else "not met" if self.lo > target else "undecided"

    def as_dict(self) -> dict:
        return {"ratio": self.median, "q1": self.q1, "q3": self.q3, "pairs": self.pairs,
                "blocks": self.blocks, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, d: dict) -> "Paired":
        return cls(d["ratio"], d["q1"], d["q3"], d["pairs"], d["blocks"], d["lo"], d["hi"])
