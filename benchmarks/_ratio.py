"""Step-time ratios with their spread, from configurations timed side by side in blocks.

Every benchmark runs its configurations interleaved, block after block, so drift on the machine
(another process, the CPU clock) hits all of them alike. A ratio is taken *within* each block
(configuration time / un-probed time of the same block) and the blocks' ratios are summarised by
their median and their interquartile range: the spread says how far a figure can be trusted on
this machine, and a target like 1.03 is only met when the range says so.

    from _ratio import Paired
    r = Paired.of(times["lossprobe-default"], times["plain"])
    print(r)              # "1.042 (IQR 1.031-1.055, 7 blocks)"
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    median: float
    q1: float
    q3: float
    blocks: int

    @classmethod
    def of(cls, times: list[float], base: list[float]) -> "Paired":
        """Ratios block by block (``times[i] / base[i]``): median and quartiles."""
        ratios = sorted(t / b for t, b in zip(times, base) if b > 0)
        if len(ratios) == 1:
            return cls(ratios[0], ratios[0], ratios[0], 1)
        q = statistics.quantiles(ratios, n=4, method="inclusive")
        return cls(statistics.median(ratios), q[0], q[2], len(ratios))

    def __str__(self) -> str:
        return f"{self.median:.3f} (IQR {self.q1:.3f}-{self.q3:.3f}, {self.blocks} blocks)"

    def as_dict(self) -> dict:
        return {"ratio": self.median, "q1": self.q1, "q3": self.q3, "blocks": self.blocks}
