"""``lossprobe tag``: give MLflow runs that were never probed the same health tags.

Reads each run's loss (and validation-loss) metric history, runs the post-hoc curve
diagnosis (:func:`lossprobe.diagnose`) and writes the tracker tags (``lossprobe.health``,
``lossprobe.diagnoses``, ``lossprobe.diagnosis.<code>``, first/last step per code), so old
runs answer the same ``search_runs`` filters as probed ones::

    lossprobe tag --experiment digits --tracking-uri http://127.0.0.1:5000
    lossprobe tag --experiment digits --loss-key train_loss --val-key eval_loss --classes 10

Safe to re-run: runs whose tags would not change are left alone, codes that no longer fire
on a longer history are removed, and runs published live by a probe
(``lossprobe.source = probe``) are skipped, since their diagnosis saw far more than the loss
curve. Back-filled runs carry ``lossprobe.source = posthoc`` and no ``lossprobe.framework``.

From Python::

    from lossprobe.cli_tag import backfill
    results = backfill("digits", tracking_uri="sqlite:///mlflow.db")
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence, TextIO

PREFIX = "lossprobe"
_OWN = (f"{PREFIX}.diagnosis.", f"{PREFIX}.first_step.", f"{PREFIX}.last_step.")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tag`` on an argparse subparsers object (``args.fn(args)`` runs it)."""
    p = subparsers.add_parser("tag", help="back-fill lossprobe health tags onto un-probed MLflow runs",
                              description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--experiment", required=True, action="append",
                   help="experiment name (repeat for several)")
    p.add_argument("--tracking-uri", default=None, help="default: MLFLOW_TRACKING_URI / mlflow's default")
    p.add_argument("--loss-key", default="loss", help="metric key of the training loss (default: loss)")
    p.add_argument("--val-key", default="val_loss", help="metric key of the validation loss (default: val_loss)")
    p.add_argument("--classes", type=int, default=0, help="number of classes (enables the ln(C) check)")
    p.add_argument("--dry-run", action="store_true", help="print the diagnosis, write no tags")
    p.set_defaults(fn=run)
    return p


class TagError(RuntimeError):
    """The back-fill cannot start: no server answers, or no such experiment (one-line message)."""


# the command line gives up on a dead server in seconds, not after MLflow's default ~4 minutes
# of retries; set while the command runs (backfill() called from Python leaves them alone)
_CLI_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def run(args: argparse.Namespace) -> int:
    """``lossprobe tag``: 0 done, 1 some runs failed, 2 nothing could start (one line on stderr)."""
    added = {k: v for k, v in _CLI_HTTP.items() if k not in os.environ}   # what the user set wins
    os.environ.update(added)
    try:
        results = backfill(args.experiment, tracking_uri=args.tracking_uri, loss_key=args.loss_key,
                           val_key=args.val_key, n_classes=args.classes, dry_run=args.dry_run)
    except TagError as exc:
        print(f"lossprobe tag: {exc}", file=sys.stderr)
        return 2
    finally:
        for k in added:
            os.environ.pop(k, None)
    return 0 if all(r["status"] != "error" for r in results) else 1


def main_tag(argv: Sequence[str] | None = None) -> int:
    """``lossprobe tag ...`` as a function: ``main_tag(["--experiment", "digits"])``."""
    ap = argparse.ArgumentParser(prog="lossprobe")
    add_parser(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(["tag", *(sys.argv[1:] if argv is None else argv)])
    return run(args)


def backfill(experiment: str | Sequence[str], tracking_uri: str | None = None, loss_key: str = "loss",
             val_key: str | None = "val_loss", n_classes: int = 0, dry_run: bool = False,
             out: TextIO | None = None) -> list[dict[str, Any]]:
    """Diagnose and tag every run of the experiment(s); one progress line per run.

    Returns one dict per run: ``run_id``, ``name``, ``status`` (tagged | unchanged |
    skipped | error), ``health``, ``codes``, ``reason``.
    """
    import mlflow
    from mlflow import MlflowClient

    from . import __version__
    from .integrations.mlflow import _experiment_ids, _reachable, _search_all, filter_string, probe_tags
    from .posthoc import diagnose
    from .verdict import health_of
    from .tags import tracker_tags

    out = out or sys.stdout
    names = [experiment] if isinstance(experiment, str) else list(experiment)
    uri = tracking_uri or mlflow.get_tracking_uri()
    if not _reachable(uri, timeout=5.0):
        raise TagError(f"no MLflow server answers at {uri} (is it running? check --tracking-uri)")
    client = MlflowClient(uri)
    try:
        found = {n: _experiment_ids(client, [n]) for n in names}
        missing = [n for n, i in found.items() if not i]
        ids = [i for n in names for i in found[n]]
        if missing:
            raise TagError(f"no experiment named {', '.join(repr(n) for n in missing)} at {uri}")
        runs = _search_all(client, ids, "")
    except TagError:
        raise
    except Exception as exc:
        raise TagError(f"cannot read runs from {uri} ({type(exc).__name__}: {_first_line(exc)})") from None
    print(f"lossprobe tag: {len(runs)} run(s) in {', '.join(names)}", file=out)
    results: list[dict[str, Any]] = []
    width = len(str(len(runs)))
    for i, run in enumerate(runs, 1):
        rid, name = run.info.run_id, run.info.run_name or ""
        res: dict[str, Any] = {"run_id": rid, "name": name, "status": "skipped", "health": None,
                               "codes": [], "reason": ""}
        try:
            tags = run.data.tags
            if tags.get(f"{PREFIX}.source") == "probe":
                res["reason"] = "published live by a probe"
            elif loss_key not in run.data.metrics:
                res["reason"] = f"no '{loss_key}' metric"
            else:
                history = _history(client, rid, loss_key)
                if val_key and val_key in run.data.metrics:
                    vh = _history(client, rid, val_key)
                    history["val_step"], history["val_loss"] = vh["step"], vh["loss"]
                findings = diagnose(history, n_classes=n_classes)
                health = health_of(findings)
                new = probe_tags(tracker_tags(findings, health, framework=None, version=__version__),
                                 findings, source="posthoc")
                stale = [k for k in tags if k.startswith(_OWN) and k not in new]
                changed = {k: v for k, v in new.items() if tags.get(k) != v}
                res.update(health=health, codes=sorted(f.code for f in findings))
                if not changed and not stale:
                    res["status"] = "unchanged"
                elif dry_run:
                    res["status"] = "would tag"
                else:
                    from mlflow.entities import RunTag
                    items = [RunTag(k, v) for k, v in changed.items()]
                    for j in range(0, len(items), 100):
                        client.log_batch(rid, tags=items[j:j + 100])
                    for k in stale:
                        client.delete_tag(rid, k)
                    res["status"] = "tagged"
        except Exception as exc:  # one broken run must not stop the rest
            res.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        results.append(res)
        detail = (f"{res['health']} {','.join(res['codes']) or '-'}" if res["health"] else res["reason"])
        print(f"[{i:>{width}}/{len(runs)}] {rid[:12]} {name[:28]:<28} {res['status']:<9} {detail}"
              + (f" ({res['reason']})" if res["health"] and res["reason"] else ""), file=out, flush=True)
    counts = {s: sum(r["status"] == s for r in results) for s in ("tagged", "unchanged", "skipped", "error")}
    print("lossprobe tag: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) +
          f". Find unhealthy runs with filter_string=\"{filter_string(health='unhealthy')}\"", file=out)
    return results


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _history(client: Any, run_id: str, key: str) -> dict[str, list]:
    """A metric's history as {"step": [...], "loss": [...]}, one value per step (the last logged)."""
    by_step: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        prev = by_step.get(m.step)
        if prev is None or m.timestamp >= prev[0]:
            by_step[m.step] = (m.timestamp, m.value)
    steps = sorted(by_step)
    # MLflow's SQL stores clamp +-Inf to +-1.8e308: read those back as the Inf they were
    vals = [v if abs(v) < 1e308 else math.copysign(math.inf, v) for v in (by_step[s][1] for s in steps)]
    return {"step": steps, "loss": vals}


if __name__ == "__main__":
    sys.exit(main_tag())
