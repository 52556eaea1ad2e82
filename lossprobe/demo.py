"""The demo: a healthy and a faulty PyTorch run side by side, diagnosed and published.

``lossprobe demo`` trains the same MLP on scikit-learn's digits twice — once healthy,
once with a learning rate 1000x too high — and prints what lossprobe found. With
trackers on it publishes both runs to a local MLflow store (``<out>/mlflow.db``) and
an offline W&B run under ``<out>/``.
"""
from __future__ import annotations

import os
from pathlib import Path


def _train(name: str, lr: float, steps: int, sinks: list, seed: int = 0):
    import torch
    from torch import nn
    from sklearn.datasets import load_digits
    import lossprobe

    torch.manual_seed(seed)
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    probe = lossprobe.attach(model, optimizer=opt, sinks=sinks)
    for step in range(steps):
        idx = torch.randint(0, len(X) - 300, (64,), generator=gen)
        loss = loss_fn(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 49:
            model.eval()
            with torch.no_grad():
                loss_fn(model(X[-300:]), y[-300:])  # captured as validation loss
            model.train()
    probe.detach()
    return probe


def _ensure_experiment(uri: str, out: Path) -> None:
    """Create the demo experiment with its artifacts next to the database (not in ./mlruns)."""
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name("lossprobe-demo") is None:
        client.create_experiment("lossprobe-demo", artifact_location=(out / "artifacts").resolve().as_uri())


def _tracker_sinks(out: Path, run_name: str) -> list:
    sinks = []
    try:
        from .integrations.mlflow import MlflowSink
        _ensure_experiment(f"sqlite:///{(out / 'mlflow.db').resolve()}", out)
        sinks.append(MlflowSink(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}",
                                experiment="lossprobe-demo", run_name=run_name))
    except Exception as exc:  # the tracker packages are optional
        print(f"(MLflow publishing off: {exc})")
    try:
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        from .integrations.wandb import WandbSink
        sinks.append(WandbSink(project="lossprobe-demo", dir=str(out), name=run_name))
    except Exception as exc:
        print(f"(W&B publishing off: {exc})")
    return sinks


def run_demo(out_dir: str = "lossprobe-demo", steps: int = 300, trackers: bool = True) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    syncs: list[str] = []
    for name, lr in (("healthy", 0.02), ("lr-too-high", 50.0)):
        print(f"\n=== run '{name}': SGD lr={lr}, {steps} steps ===")
        sinks = ["console"] + (_tracker_sinks(out, name) if trackers else [])
        probe = _train(name, lr, steps, sinks)
        syncs += [s.sync_command for s in sinks if getattr(s, "sync_command", None)]
        probe.save_report(out / f"{name}.html")
        results[name] = probe
    print("\n=== summary ===")
    for name, probe in results.items():
        codes = ", ".join(f.code for f in probe.findings if f.severity != "info") or "-"
        print(f"{name:<12} health={probe.health:<9} diagnoses: {codes}")
        for f in probe.findings:
            if f.severity != "info":
                print(f"    {f.code} from step {f.step}: {f.evidence}")
    print(f"\nHTML reports: {out}/healthy.html, {out}/lr-too-high.html")
    if trackers:
        _print_tracker_help(out)
        for cmd in syncs:
            print(f"W&B offline run; upload with: {cmd}")
    ok = results["healthy"].health == "healthy" and results["lr-too-high"].health != "healthy"
    return 0 if ok else 1


def _print_tracker_help(out: Path) -> None:
    uri = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    try:
        import mlflow
        mlflow.set_tracking_uri(uri)
        q = "tags.`lossprobe.health` = 'critical'"
        runs = mlflow.search_runs(experiment_names=["lossprobe-demo"], filter_string=q)
        names = list(runs.get("tags.mlflow.runName", []))
        print(f"\nMLflow: mlflow.search_runs(filter_string=\"{q}\") -> {names}")
        print(f"  open the UI: mlflow ui --backend-store-uri {uri}")
    except Exception as exc:
        print(f"(MLflow query skipped: {exc})")
