"""Where the default probe's added step time goes (PyTorch, the benchmark MLP), by switching
parts off through public Config fields, side by side in one process.

Each configuration runs in every block (rotated order); the added time per step is taken
against the un-probed run of the same block, and the median over blocks is printed with
its interquartile range. A part's cost is read as the default's added time minus the added
time without it (parts interact a little: the sum of the parts is not exactly the whole).

    python benchmarks/overhead_parts.py                 # 14 blocks x 100 steps, ~2 min
    python benchmarks/overhead_parts.py --blocks 20
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import lossprobe
from overhead import torch_models   # run from anywhere: python benchmarks/overhead_parts.py

C = lossprobe.Config
CONFIGS: dict[str, "lossprobe.Config | None"] = {
    "plain": None,
    "default": C(),
    "no input check (capture_inputs=False)": C(capture_inputs=False),
    "no rules (rules_every=1e9)": C(rules_every=10**9),
    "no sampled steps (activation_every=1e9)": C(activation_every=10**9),
    "floor: hooks, loss, gradient norms, flush": C(capture_inputs=False, capture_outputs=False,
                                                   rules_every=10**9, activation_every=10**9),
}


def step_time(make, cfg, x, y, steps: int, warmup: int = 20) -> float:
    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=cfg) if cfg is not None else None
    try:
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / steps
    finally:
        if probe is not None:
            probe.detach()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=14)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    make, x, y = torch_models("cpu")["mlp"]   # overhead.py's MLP and batch
    names = list(CONFIGS)
    added: dict[str, list[float]] = {n: [] for n in names}
    plain: list[float] = []
    for b in range(args.blocks):
        k = b % len(names)
        got = {n: step_time(make, CONFIGS[n], x, y, args.steps) for n in names[k:] + names[:k]}
        plain.append(got["plain"])
        for n in names:
            added[n].append((got[n] - got["plain"]) * 1e6)
    print(f"# torch MLP on cpu, plain step {statistics.median(plain) * 1e3:.2f} ms, "
          f"{args.blocks} blocks x {args.steps} steps; added us/step: median (IQR)")
    for n in names[1:]:
        q = statistics.quantiles(added[n], n=4) if len(added[n]) > 1 else [added[n][0]] * 3
        print(f"{n:45s} {statistics.median(added[n]):6.0f} ({q[0]:.0f}-{q[2]:.0f})")


if __name__ == "__main__":
    main()
