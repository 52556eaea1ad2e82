"""Overhead benchmark: step-time ratios of probed vs un-probed training, side by side.

Every configuration is timed against an un-probed twin: two copies of the model (same seed,
same batch) in one process train in alternating chunks of ``--chunk`` steps (the probe's
flush_every, so each probed chunk holds one flush and its processing), ``--rounds`` chunks
each per block; which copy is instrumented alternates from block to block, and the order of
the configurations rotates (``_ratio.alternate``). Machine drift then hits both copies alike.
A ratio is taken for each pair of adjacent chunks; all blocks' pairs give the median, the
interquartile range and a block-bootstrap confidence interval of the median
(``_ratio.Paired``). Two calibration lines come with every model:

* ``A/A``: neither copy instrumented -- the method's own bias and spread;
* ``un-probed-beside-a-probe``: the twin's cost of a probe elsewhere in the process (the
  process-wide module hooks every forward passes through). The twin of a probed copy pays
  it too, so a probed ratio understates the probe's cost by about that much.

Printed at the end, one line per configuration:
``name ratio=R iqr=Q1-Q3 ci=LO-HI`` (a chunk's time / the un-probed twin's adjacent chunk;
``ci``: the median's ~95% confidence interval), then whether each target of the issue is met:
"met" or "not met" only when that interval lies on one side of it.

    python benchmarks/overhead.py                 # PyTorch MLP + CNN (+ Keras, Paddle if installed)
    python benchmarks/overhead.py --quick         # fewer blocks
    python benchmarks/overhead.py --frameworks torch
    python benchmarks/overhead.py --frameworks torch --configs lossprobe-default --blocks 40   # a narrow CI
    python benchmarks/overhead.py --device cuda   # on a GPU, with set_sync_debug_mode("error")
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _ratio import (GLIBC_DEFAULT_FLAG, Paired, alternate, fixed_malloc, malloc_note,  # noqa: E402
                    pair_ratios, twin_step)


# ---------------------------------------------------------------------- torch
def torch_models(device):
    import torch
    from torch import nn
    # the design note's anchor: a 4-layer MLP on 784-wide inputs, batch 128
    mlp = lambda: nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).to(device)
    cnn = lambda: nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
                                nn.Flatten(), nn.Linear(512, 10)).to(device)
    x_mlp = torch.randn(128, 784, device=device)
    x_cnn = torch.randn(128, 1, 16, 16, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    return {"mlp": (mlp, x_mlp, y), "cnn": (cnn, x_cnn, y)}


@dataclass
class Contender:
    """How one configuration instruments its copy of the model: ``setup(model, opt)`` a
    context held over the whole block (attach the probe, wandb.watch), ``around_chunk()`` a
    context around each of its timed chunks (detect_anomaly, which is process-wide)."""
    setup: Callable
    around_chunk: Callable | None = None


def torch_configs(sync_debug: bool, with_wandb: bool = True) -> dict[str, Contender]:
    """name -> Contender; "plain" is the A/A pair (nothing attached to either copy)."""
    import torch
    import lossprobe

    @contextlib.contextmanager
    def nothing(*_):
        yield

    def probe(cfg):
        def f(model, opt):
            p = lossprobe.attach(model, optimizer=opt, config=cfg, sinks=[])
            try:
                if sync_debug:
                    torch.cuda.set_sync_debug_mode("error")
                yield
            finally:
                if sync_debug:
                    torch.cuda.set_sync_debug_mode("default")
                p.detach()
        return contextlib.contextmanager(f)

    @contextlib.contextmanager
    def beside_a_probe():
        """A probe on a third, idle model: the hooks every module call in the process passes
        through (what the un-probed twin pays while the other copy is probed)."""
        from torch import nn
        other = nn.Linear(2, 2)
        p = lossprobe.attach(other, optimizer=torch.optim.SGD(other.parameters(), lr=0.1), sinks=[])
        other(torch.zeros(1, 2))   # one forward: the twin's losses are then told from its own
        try:
            yield
        finally:
            p.detach()

    @contextlib.contextmanager
    def wandb_watch(model, opt):
        import wandb
        run = wandb.init(mode="offline", dir=tempfile.mkdtemp(), project="lossprobe-bench")
        run.watch(model, log="all", log_freq=1)
        try:
            yield
        finally:
            run.unwatch(model)
            run.finish()

    configs = {
        "plain": Contender(nothing),
        "lossprobe-default": Contender(probe(lossprobe.Config())),
        "lossprobe-every-signal": Contender(probe(lossprobe.Config(flush_every=1, activation_every=1))),
        "detect_anomaly": Contender(nothing, lambda: torch.autograd.detect_anomaly(check_nan=True)),
        "un-probed-beside-a-probe": Contender(nothing, beside_a_probe),
    }
    if with_wandb:
        try:
            import wandb  # noqa: F401
            configs["wandb.watch-all"] = Contender(wandb_watch)
        except ImportError:
            pass
    return configs


def torch_pair(make, x, y, setup, args, flip: bool, around=None, cuda: bool = False) -> list[tuple[float, float]]:
    """Seconds of the un-probed twin and of the configured copy, chunk pair by chunk pair, over
    one block (``_ratio.alternate``): two copies from ``make`` (same seed), SGD, cross-entropy on
    ``x, y``; ``setup(model, opt)`` instruments copy 1 for the block, ``around()`` each of its
    chunks; ``flip`` swaps which copy that is."""
    import torch
    from torch import nn
    pair = []
    for _ in range(2):
        torch.manual_seed(0)
        model = make()
        pair.append((model, torch.optim.SGD(model.parameters(), lr=0.01)))
    if flip:
        pair.reverse()
    loss_fn = nn.CrossEntropyLoss()

    def run_chunk(i: int) -> float:
        model, opt = pair[i]
        with (around() if (i == 1 and around is not None) else contextlib.nullcontext()):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(args.chunk):
                loss = loss_fn(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - t0

    with setup(*pair[1]):
        return alternate(run_chunk, args.rounds)


def bench_torch(args, watch: bool, earlier: dict | None = None) -> dict[str, dict]:
    """Each configuration against its un-probed twin, block by block (``_ratio.alternate``);
    ``watch``: only wandb.watch (run after everything else: once started, wandb's service
    process stays up in this process's lifetime and takes CPU), set beside ``earlier``'s
    every-signal ratio."""
    import torch
    torch.set_num_threads(1)
    device = args.device
    cuda = device.startswith("cuda")
    results = {}
    models = torch_models(device)
    for mname in args.models.split(","):
        watch_phase = watch
        make, x, y = models[mname]
        configs = torch_configs(sync_debug=cuda, with_wandb=watch_phase)
        if args.configs:   # the A/A pair always runs beside the chosen ones
            keep = {"plain", *args.configs.split(","), *(["wandb.watch-all"] if watch_phase else [])}
            configs = {c: v for c, v in configs.items() if c in keep}
        if watch_phase:
            if "wandb.watch-all" not in configs:
                continue
            configs = {c: configs[c] for c in ("plain", "wandb.watch-all")}
        else:
            configs.pop("wandb.watch-all", None)
        pairs: dict[str, list[list[tuple[float, float]]]] = {c: [] for c in configs}
        twin_steps: dict[str, list[float]] = {c: [] for c in configs}
        names = list(configs)
        t_start = time.perf_counter()
        for block in range(args.blocks):
            k = block % len(names)
            for cname in names[k:] + names[:k]:  # rotate: no configuration always goes first
                contender = configs[cname]
                block_pairs = torch_pair(make, x, y, contender.setup, args, flip=bool(block % 2),
                                         around=contender.around_chunk, cuda=cuda)
                pairs[cname].append(block_pairs)
                twin_steps[cname].append(twin_step(block_pairs, args.chunk))
        base = statistics.median(t for ts in twin_steps.values() for t in ts)
        phase = " (wandb.watch, after the rest)" if watch_phase else ""
        print(f"\n[torch {mname} on {device}{phase}] un-probed step = {base * 1e3:.3f} ms; {args.blocks} blocks, "
              f"each {args.rounds} alternating chunks of {args.chunk} steps per copy; {time.perf_counter() - t_start:.0f} s")
        for cname, ps in pairs.items():
            r = Paired.from_pairs(ps)
            label = "A/A: both copies un-probed" if cname == "plain" else cname
            print(f"  {label:<28} ratio {r}  added {(r.median - 1) * base * 1e6:7.0f} us/step")
            results[f"torch-{mname}-{cname}" + ("-wandb-phase" if watch_phase and cname == "plain" else "")] = r.as_dict()
            if args.verbose:   # each block's median pair
                print("    blocks:", " ".join(f"{statistics.median(pair_ratios(b)):.3f}" for b in ps))
        if watch_phase:
            every = (earlier or {}).get(f"torch-{mname}-lossprobe-every-signal", {}).get("ratio", math.nan) - 1
            watch = Paired.from_pairs(pairs["wandb.watch-all"]).median - 1
            print(f"  added time relative to the twin: lossprobe every-signal {every:.3f} (above) vs wandb.watch "
                  f"{watch:.3f} -> {watch / max(every, 1e-9):.1f}x cheaper")
    return results


def bench_history_memory() -> dict[str, dict]:
    """History bytes after 1k and 100k flushed records of a tiny layout: must be equal."""
    import numpy as np
    from lossprobe.history import History
    from lossprobe.record import Layout, StepRecord
    layout = Layout("bench", params=[f"p{i}" for i in range(4)], param_sizes=[4] * 4,
                    activations=["a"], kinds=["relu"], is_weight=[True] * 4)
    h = History(layout)
    sizes = {}
    for step in range(100_000):
        r = StepRecord.empty(step, layout)
        r.loss, r.loss_seen = 1.0 / (1 + step), 1.0
        h.append(r)
        if step + 1 in (1_000, 100_000):
            sizes[step + 1] = h.nbytes()
    print(f"\n[history memory] after 1k steps: {sizes[1000]} B, after 100k steps: {sizes[100000]} B")
    grow = sizes[100000] / sizes[1000]
    return {"history-bytes-100k-over-1k": Paired.from_blocks([[grow]]).as_dict()}


def bench_subprocess(framework: str, args) -> dict[str, dict]:
    """Keras and Paddle run in their own processes (TensorFlow then Paddle segfaults)."""
    script = HERE / f"overhead_{framework}.py"
    if not script.exists():
        print(f"\n[{framework}] skipped: {script.name} not present")
        return {}
    out = subprocess.run([sys.executable, str(script), "--blocks", str(args.blocks), "--rounds", str(args.rounds),
                          "--chunk", str(args.chunk)] + ([GLIBC_DEFAULT_FLAG] if args.glibc_default else []),
                         capture_output=True, text=True)
    print(out.stdout, end="")
    if out.returncode != 0:
        print(f"[{framework}] failed: {out.stderr[-2000:]}")
        return {}
    last = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    return json.loads(last[-1][7:]) if last else {}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=4, help="timed chunks per copy in a block")
    ap.add_argument("--chunk", type=int, default=20, help="steps per chunk (the probe's flush_every)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--verbose", action="store_true", help="print every block's ratio")
    ap.add_argument("--frameworks", default="torch,keras,paddle")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--configs", default="", help="torch configurations to run, comma-separated "
                    "(e.g. lossprobe-default; the A/A pair always runs): more blocks in the same time")
    ap.add_argument("--no-wandb", action="store_true",
                    help="leave out wandb.watch: its background service process competes for the cores")
    ap.add_argument(GLIBC_DEFAULT_FLAG, action="store_true",
                    help="keep glibc's heap trimming (see benchmarks/_ratio.py): noisier, closer to a default process")
    args = ap.parse_args()
    fixed_malloc()
    print(f"# {malloc_note()}")
    if args.quick:
        args.blocks, args.rounds = 3, 2
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_MODE", "offline")
    results: dict[str, dict] = {}
    fws = args.frameworks.split(",")
    if "torch" in fws:
        results.update(bench_torch(args, watch=False))
        results.update(bench_history_memory())
    for fw in ("keras", "paddle"):
        if fw in fws:
            results.update(bench_subprocess(fw, args))
    if "torch" in fws and not args.no_wandb:
        results.update(bench_torch(args, watch=True, earlier=results))
    print("\n# ratios (chunk time / the un-probed twin's adjacent chunk; median over the pairs, their "
          "interquartile range, the median's ~95% confidence interval)")
    for name, r in results.items():
        print(f"{name} ratio={r['ratio']:.3f} iqr={r['q1']:.3f}-{r['q3']:.3f} ci={r['lo']:.3f}-{r['hi']:.3f}")
    print("\n# targets (issue 15): met / not met when the median's confidence interval is on one side")
    for name, target in TARGETS.items():
        if name in results:
            p = Paired.from_dict(results[name])
            print(f"{name} <= {target}: {p.verdict(target)} (median {p.median:.3f}, CI {p.lo:.3f}-{p.hi:.3f})")
    return 0


# what the defaults should cost (issue 15): step time over the un-probed twin's
TARGETS = {"torch-mlp-lossprobe-default": 1.03, "torch-cnn-lossprobe-default": 1.03,
           "keras-fit-lossprobe-default": 1.05, "paddle-loop-lossprobe-default": 1.05}


if __name__ == "__main__":
    sys.exit(main())
