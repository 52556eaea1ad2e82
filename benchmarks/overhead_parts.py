"""Where the default probe's added step time goes (PyTorch, the benchmark MLP), by switching
parts off through public Config fields, each configuration against an un-probed twin.

Each configuration runs in every block (rotated order) as overhead.py runs them: two copies of
the model train in alternating chunks (``_ratio.alternate``), one carrying the probe. The
added time per step is the configured copy's chunk minus its twin's adjacent chunk; the median
over all pairs is printed with its 95% confidence interval (``_ratio.Paired``, block
bootstrap). A part's cost is read as the default's added time minus the added time without it
(parts interact a little: the sum of the parts is not exactly the whole).

    python benchmarks/overhead_parts.py                 # 7 blocks x 4 chunks of 20 steps per copy, ~2 min
    python benchmarks/overhead_parts.py --blocks 14
"""
from __future__ import annotations

import argparse
import contextlib

import torch

import lossprobe
from _parts import PART_CONFIGS
from _ratio import GLIBC_DEFAULT_FLAG, Paired, fixed_malloc, malloc_note
from overhead import torch_models, torch_pair   # run from anywhere: python benchmarks/overhead_parts.py



def added_us(make, cfg, x, y, flip: bool, args) -> list[float]:
    """Microseconds per step the configured copy takes beyond its un-probed twin, one value
    per pair of adjacent chunks of one block."""
    @contextlib.contextmanager
    def probed(model, opt):
        probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=cfg) if cfg is not None else None
        try:
            yield
        finally:
            if probe is not None:
                probe.detach()

    return [(c - t) / args.chunk * 1e6 for t, c in torch_pair(make, x, y, probed, args, flip)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=20)
    ap.add_argument(GLIBC_DEFAULT_FLAG, action="store_true", help="keep glibc's heap trimming (benchmarks/_ratio.py)")
    args = ap.parse_args()
    fixed_malloc()
    print(f"# {malloc_note()}")
    torch.set_num_threads(1)
    make, x, y = torch_models("cpu")["mlp"]   # overhead.py's MLP and batch
    names = list(PART_CONFIGS)
    added: dict[str, list[list[float]]] = {n: [] for n in names}   # per block, its pairs
    for b in range(args.blocks):
        k = b % len(names)
        for n in names[k:] + names[:k]:
            added[n].append(added_us(make, PART_CONFIGS[n], x, y, bool(b % 2), args))
    print(f"# torch MLP on cpu, {args.blocks} blocks x {args.rounds} chunk pairs of {args.chunk} steps; "
          "added us/step against the un-probed twin's adjacent chunk: median over the pairs "
          "(the median's 95% CI, block bootstrap)")
    for n in names:
        r = Paired.from_blocks(added[n])
        label = "A/A: nothing attached" if n == "plain" else n
        print(f"{label:45s} {r.median:6.0f} ({r.lo:.0f} to {r.hi:.0f})")


if __name__ == "__main__":
    main()
