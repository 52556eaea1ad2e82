"""Overhead benchmark: step-time ratios of probed vs un-probed training, side by side.

Configurations run interleaved (A B C ... A B C ...) in blocks on the same model and data;
each block's time per step is measured after warm-up and the median over blocks is taken,
so drift on the machine hits every configuration alike; a ratio is taken within each block and
the blocks' ratios give the median and the interquartile range (``_ratio.Paired``). Wall time
and process CPU time (every thread: the probe's worker too) are both measured. Printed at the
end, one line per configuration:
``name ratio=R iqr=Q1-Q3 cpu_ratio=C`` (step time / un-probed step time in the same block).

    python benchmarks/overhead.py                 # PyTorch MLP + CNN (+ Keras, Paddle if installed)
    python benchmarks/overhead.py --quick         # fewer blocks
    python benchmarks/overhead.py --frameworks torch
    python benchmarks/overhead.py --device cuda   # on a GPU, with set_sync_debug_mode("error")
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _ratio import Paired  # noqa: E402


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


def torch_configs(sync_debug: bool, with_wandb: bool = True):
    """name -> context factory(model, opt) that sets up and tears down the probe."""
    import torch
    import lossprobe

    @contextlib.contextmanager
    def plain(model, opt):
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
    def anomaly(model, opt):
        with torch.autograd.detect_anomaly(check_nan=True):
            yield

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
        "plain": plain,
        "lossprobe-default": probe(lossprobe.Config()),
        "lossprobe-every-signal": probe(lossprobe.Config(flush_every=1, activation_every=1)),
        "detect_anomaly": anomaly,
    }
    if with_wandb:
        try:
            import wandb  # noqa: F401
            configs["wandb.watch-all"] = wandb_watch
        except ImportError:
            pass
    return configs


def bench_torch(args) -> dict[str, dict]:
    import torch
    from torch import nn
    torch.set_num_threads(1)
    device = args.device
    results = {}
    for mname, (make, x, y) in torch_models(device).items():
        configs = torch_configs(sync_debug=device.startswith("cuda"), with_wandb=not args.no_wandb)
        loss_fn = nn.CrossEntropyLoss()
        times: dict[str, list[float]] = {c: [] for c in configs}
        cpu: dict[str, list[float]] = {c: [] for c in configs}
        names = list(configs)
        for block in range(args.blocks):
            k = block % len(names)
            for cname in names[k:] + names[:k]:  # rotate: no configuration always goes first
                ctx = configs[cname]
                torch.manual_seed(0)
                model = make()
                opt = torch.optim.SGD(model.parameters(), lr=0.01)
                with ctx(model, opt):
                    for i in range(args.warmup + args.steps):
                        if i == args.warmup:
                            if device.startswith("cuda"):
                                torch.cuda.synchronize()
                            t0, c0 = time.perf_counter(), time.process_time()
                        loss = loss_fn(model(x), y)
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times[cname].append((time.perf_counter() - t0) / args.steps)
                    cpu[cname].append((time.process_time() - c0) / args.steps)
        base = statistics.median(times["plain"])
        print(f"\n[torch {mname} on {device}] plain step = {base * 1e3:.3f} ms, {args.blocks} blocks x {args.steps} steps")
        for cname, ts in times.items():
            r, c = Paired.of(ts, times["plain"]), Paired.of(cpu[cname], cpu["plain"])
            print(f"  {cname:<24} {statistics.median(ts) * 1e3:8.3f} ms/step  ratio {r}  cpu {c.median:.3f}")
            if cname != "plain":
                results[f"torch-{mname}-{cname}"] = {**r.as_dict(), "cpu_ratio": c.median}
        every, watch = times["lossprobe-every-signal"], times.get("wandb.watch-all")
        if watch:
            added_probe = statistics.median(every) - base
            added_watch = statistics.median(watch) - base
            print(f"  added time: lossprobe every-signal {added_probe * 1e3:.3f} ms vs wandb.watch {added_watch * 1e3:.3f} ms "
                  f"-> {added_watch / max(added_probe, 1e-9):.1f}x cheaper")
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
    return {"history-bytes-100k-over-1k": {"ratio": grow, "q1": grow, "q3": grow, "blocks": 1}}


def bench_subprocess(framework: str, args) -> dict[str, dict]:
    """Keras and Paddle run in their own processes (TensorFlow then Paddle segfaults)."""
    script = HERE / f"overhead_{framework}.py"
    if not script.exists():
        print(f"\n[{framework}] skipped: {script.name} not present")
        return {}
    out = subprocess.run([sys.executable, str(script), "--blocks", str(args.blocks), "--steps", str(args.steps)],
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
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--frameworks", default="torch,keras,paddle")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-wandb", action="store_true",
                    help="leave out wandb.watch: its background service process competes for the cores")
    args = ap.parse_args()
    if args.quick:
        args.blocks, args.steps = 3, 100
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_MODE", "offline")
    results: dict[str, dict] = {}
    fws = args.frameworks.split(",")
    if "torch" in fws:
        results.update(bench_torch(args))
        results.update(bench_history_memory())
    for fw in ("keras", "paddle"):
        if fw in fws:
            results.update(bench_subprocess(fw, args))
    print("\n# ratios (step time / un-probed step time in the same block; median, interquartile range)")
    for name, r in results.items():
        cpu = f" cpu_ratio={r['cpu_ratio']:.3f}" if "cpu_ratio" in r else ""
        print(f"{name} ratio={r['ratio']:.3f} iqr={r['q1']:.3f}-{r['q3']:.3f}{cpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
