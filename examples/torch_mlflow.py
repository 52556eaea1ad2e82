"""lossprobe with MLflow: three runs, then the query that finds the broken ones.

Run it (CPU, well under a minute; no server needed)::

    .venv/bin/python examples/torch_mlflow.py                      # ./lossprobe-demo/mlflow.db
    .venv/bin/python examples/torch_mlflow.py --tracking-uri http://127.0.0.1:5000

1. ``healthy``: the usual MLflow setup -- the user starts the run and logs its own loss;
   lossprobe (``sinks=["mlflow"]``) publishes into that active run and leaves it open.
2. ``lr0.5``: no MLflow code at all; ``MlflowSink`` starts the run itself (and ends it).
   SGD with momentum 0.9 and lr=0.5 makes the loss diverge.
3. ``inf-loss``: the loss is multiplied by inf from step 100 on: NaN weights, ``nan_loss``.

Then it asks MLflow which runs are critical, with the filter string it uses, and prints the
command that opens the MLflow UI on the store.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import mlflow
import torch
from sklearn.datasets import load_digits
from torch import nn

import lossprobe
from lossprobe.integrations.mlflow import MlflowSink, filter_string, find_runs

EXPERIMENT = "lossprobe-example"


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model, opt, data, steps: int = 200, inf_from: int | None = None, log=None) -> None:
    X, y = data
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, len(X), (64,), generator=g)
        loss = loss_fn(model(X[idx]), y[idx])
        if log is not None:
            log(step, loss)
        if inf_from is not None and step >= inf_from:
            loss = loss * float("inf")
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tracking-uri", default=None, help="default: sqlite:///<out>/mlflow.db")
    ap.add_argument("--out", default="lossprobe-demo")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    uri = args.tracking_uri or f"sqlite:///{(out / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(uri)
    if args.tracking_uri is None and mlflow.get_experiment_by_name(EXPERIMENT) is None:
        # keep the artifacts (findings.json, report.html) next to the database, not in ./mlruns
        mlflow.create_experiment(EXPERIMENT, artifact_location=(out / "artifacts").resolve().as_uri())
    exp = mlflow.set_experiment(EXPERIMENT)
    data = digits()

    # 1. the user's own run; lossprobe joins it
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with mlflow.start_run(run_name="healthy"):
        mlflow.log_params({"lr": 0.05, "momentum": 0.9})
        with lossprobe.attach(model, optimizer=opt, sinks=["console", "mlflow"]):
            train(model, opt, data, args.steps,
                  log=lambda s, l: s % 20 == 0 and mlflow.log_metric("train_loss", l.item(), step=s))

    # 2. and 3. lossprobe starts (and ends) the runs
    for name, lr, inf_from in [("lr0.5", 0.5, None), ("inf-loss", 0.05, 100)]:
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        sink = MlflowSink(tracking_uri=uri, experiment=EXPERIMENT, run_name=name)
        with lossprobe.attach(model, optimizer=opt, sinks=["console", sink]):
            train(model, opt, data, args.steps, inf_from=inf_from)

    q = filter_string(health="critical")
    runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], filter_string=q, output_format="list")
    print(f"\nmlflow.search_runs(filter_string=\"{q}\") -> {sorted(r.info.run_name for r in runs)}")
    nan_runs = find_runs(EXPERIMENT, diagnosis="nan_loss", tracking_uri=uri)
    print(f"find_runs({EXPERIMENT!r}, diagnosis='nan_loss') -> {sorted(r.info.run_name for r in nan_runs)}")
    print(f"open the UI:  mlflow ui --backend-store-uri {uri}")


if __name__ == "__main__":
    main()
