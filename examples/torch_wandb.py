"""lossprobe with Weights & Biases: two offline runs, no account and no network needed.

Run it (CPU, a few seconds)::

    .venv/bin/python examples/torch_wandb.py                  # runs under ./lossprobe-demo/
    .venv/bin/python examples/torch_wandb.py --out /tmp/demo --image section.png

1. ``healthy``: the usual W&B setup -- the user calls ``wandb.init``, ``wandb.watch`` and logs
   its own loss with an explicit ``step=``; lossprobe (``sinks=["wandb"]``) logs into that run
   under ``lossprobe/`` with its own step axis, and never finishes the user's run.
2. ``faulty-lr0.5``: no W&B code at all; ``WandbSink(mode="offline")`` starts the run itself
   (and finishes it). SGD with momentum 0.9 and lr=0.5 (ten times the healthy run's) makes
   the loss diverge and kills ReLU units: the run gets one tag per code found
   (``loss_divergence``, ``learning_rate_too_high``, ``dead_relu``...),
   ``lossprobe/health = critical`` in its summary, a findings table and the HTML report
   panel (online, it would also send a W&B alert).

Each run's ``wandb sync`` command is printed; run it (after ``wandb login``) to upload.
``--image PATH`` draws a picture of the ``lossprobe`` section of the faulty run, from what
W&B wrote to disk (it needs matplotlib).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch import nn

import lossprobe
from lossprobe.integrations.wandb import WandbSink


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model, opt, data, steps: int = 200, log=None) -> None:
    X, y = data
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, len(X), (64,), generator=g)
        loss = loss_fn(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None:
            log(step, loss)


def healthy_run(data, out: Path) -> tuple[lossprobe.Probe, Path]:
    import wandb
    run = wandb.init(project="lossprobe-demo", name="healthy", dir=str(out), mode="offline")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    wandb.watch(model, log="gradients", log_freq=50)
    with lossprobe.attach(model, optimizer=opt, sinks=["wandb"]) as probe:
        train(model, opt, data, log=lambda step, loss: wandb.log({"train/loss": loss.item()}, step=step))
    run_dir = Path(run.dir).parent
    run.finish()
    return probe, run_dir


def faulty_run(data, out: Path) -> tuple[lossprobe.Probe, Path]:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sink = WandbSink(project="lossprobe-demo", mode="offline", name="faulty-lr0.5", dir=str(out))
    with lossprobe.attach(model, optimizer=opt, sinks=[sink]) as probe:
        train(model, opt, data)
    return probe, sink.run_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="lossprobe-demo", help="directory for the offline runs")
    ap.add_argument("--image", help="also draw the faulty run's lossprobe section to this PNG")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(1)          # a tiny model: one thread is faster than two on a busy CPU
    os.environ.setdefault("WANDB_CONSOLE", "off")
    data = digits()
    for name, fn in (("healthy", healthy_run), ("faulty-lr0.5", faulty_run)):
        probe, run_dir = fn(data, out)
        codes = ", ".join(f"{f.code} ({f.severity}, step {f.step})" for f in probe.findings) or "none"
        print(f"{name:12s} health={probe.health:8s} findings: {codes}")
        print(f"{'':12s} W&B run: {run_dir}\n{'':12s} upload:  wandb sync {run_dir}")
    if args.image:
        print(f"section image: {draw_section(run_dir, Path(args.image))}")
    return 0


def draw_section(run_dir: Path, path: Path) -> Path:
    """Draw the lossprobe section of an offline run (charts, summary, findings table) from
    the run file W&B wrote: a picture of what the workspace shows once the run is synced."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wandb_reader import read_run

    run = read_run(run_dir)
    charts = [("lossprobe/loss", None), ("lossprobe/grad_norm", "log"), ("lossprobe/update_ratio", "log")]
    families = [("lossprobe/grad_norm/", "grad_norm per layer"), ("lossprobe/dead_fraction/", "dead_fraction per layer")]
    fig = plt.figure(figsize=(13, 8.2), facecolor="#fafafa")
    fig.suptitle(f"W&B workspace, section \"lossprobe\" -- run {run.id}\n"
                 + textwrap.fill(f"tags: {', '.join(run.tags)}", 150),
                 x=0.02, ha="left", fontsize=11, fontweight="bold")
    grid = fig.add_gridspec(3, 3, height_ratios=[1, 1, 1.15], hspace=0.55, wspace=0.25)
    for i, (key, scale) in enumerate(charts):
        ax = fig.add_subplot(grid[0, i])
        pts = [(s, v) for s, v in run.series(key) if v == v and abs(v) != float("inf")]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, color="#1f77b4")
        if scale:
            ax.set_yscale(scale)
        ax.set_title(key, fontsize=9, loc="left")
        ax.set_xlabel("lossprobe/step", fontsize=8)
        ax.tick_params(labelsize=7)
    for i, (prefix, title) in enumerate(families):
        ax = fig.add_subplot(grid[1, i])
        keys = sorted({k for row in run.history for k in row if k.startswith(prefix)})
        for key in keys:
            pts = [(s, v) for s, v in run.series(key) if v == v and abs(v) != float("inf")]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1, label=key[len(prefix):])
        if prefix.startswith("lossprobe/grad_norm"):
            ax.set_yscale("log")
        ax.set_title(f"lossprobe/layers: {title}", fontsize=9, loc="left")
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    ax = fig.add_subplot(grid[1, 2])
    ax.axis("off")
    ax.set_title("run summary", fontsize=9, loc="left")
    lines = [f"{k} = {run.summary[k]}" for k in ("lossprobe/health", "lossprobe/root_cause", "lossprobe/fix_first",
                                                 "lossprobe/diagnoses", "lossprobe/findings_count")
             if k in run.summary]
    ax.text(0, 0.95, "\n".join(textwrap.fill(s, 48) for s in lines), va="top", fontsize=8, family="monospace")
    ax = fig.add_subplot(grid[2, :])
    ax.axis("off")
    ax.set_title("lossprobe/findings (wandb.Table)", fontsize=9, loc="left")
    table = run.table("lossprobe/findings")
    cols = ["root_cause", "code", "severity", "status", "first_step", "evidence", "fixes"]
    idx = [table["columns"].index(c) for c in cols]
    cells = [[textwrap.shorten(str(r[i]), 58) for i in idx] for r in table["data"]] or [["(none)"] + [""] * 6]
    t = ax.table(cellText=cells, colLabels=cols, loc="upper left", cellLoc="left",
                 colWidths=[0.13, 0.13, 0.06, 0.05, 0.06, 0.27, 0.30])
    t.auto_set_font_size(False)
    t.set_fontsize(7)
    t.scale(1, 1.4)
    for (r, c), cell in t.get_celld().items():
        if r > 0 and c == 2 and cells[r - 1][2] == "critical":
            cell.get_text().set_color("#c62828")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
