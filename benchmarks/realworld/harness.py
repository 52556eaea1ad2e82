"""Runs one corpus program with lossprobe attached as a user would, and writes what it found.

    python benchmarks/realworld/harness.py PROGRAM.py --framework keras --out result.json [--seed 0]

The program runs unchanged (``runpy``, as ``__main__``, in its own folder). The only help it
gets is the attach a user would add:

* ``keras``: ``keras.Model.fit`` attaches a probe to the model on its first call (lossprobe
  attaches after ``compile``, so nothing in the program changes);
* ``paddle``: likewise ``paddle.Model.fit``; a dygraph loop has the one ``lossprobe.attach``
  line its author would add;
* ``torch``: raw loops have the one ``lossprobe.attach(model)`` line (marked in the program).

Every probe the program creates is detached when the program ends, and the result is written
as JSON: whether the program ran, each probe's health, findings and loss outline. Only the
framework the case names is imported here (TensorFlow and Paddle in one process segfault).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import random
import runpy
import sys
import time
import traceback
import weakref
from pathlib import Path

import numpy as np


def _seed_everything(framework: str, seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    if framework == "keras":
        import keras
        keras.utils.set_random_seed(seed)
    elif framework == "torch":
        import torch
        torch.manual_seed(seed)
        torch.set_num_threads(1)
    elif framework == "paddle":
        import paddle
        paddle.seed(seed)


def _auto_attach(framework: str, attach) -> None:
    """Attach at the first ``fit`` of a high-level API: where a user would add the line."""
    seen: "weakref.WeakSet" = weakref.WeakSet()

    def wrap(cls):
        orig = cls.fit

        @functools.wraps(orig)
        def fit(self, *args, **kwargs):
            if self not in seen:
                seen.add(self)
                try:
                    attach(self)
                except RuntimeError:
                    pass  # the program attached it itself
                else:
                    # the probe may wrap fit on the instance: go through it (it ends up here again)
                    return self.fit(*args, **kwargs)
            return orig(self, *args, **kwargs)
        cls.fit = fit

    if framework == "keras":
        import keras
        wrap(keras.Model)
    elif framework == "paddle":
        import paddle
        wrap(paddle.Model)


def _summary(probe) -> dict:
    h = probe.history
    steps, losses = h.loss_sketch()
    return {
        "health": probe.health,
        "n_steps": int(h.n_steps),
        "findings": [f.to_dict() for f in probe.findings],
        "loss_steps": [int(s) for s in steps],
        "losses": [float(v) for v in losses],
        "val_steps": [int(s) for s in h.val_sketch()[0]],
        "val_losses": [float(v) for v in h.val_sketch()[1]],
    }


def _tap(probe) -> None:
    """Keep every StepRecord and validation point the probe's history receives: the history
    itself keeps only its window (1024 steps by default), the recording the whole run."""
    h = probe.history
    probe._tapped = ([], [])
    append, add_val = h.append, h.add_val

    def tap_append(rec):
        probe._tapped[0].append(rec)
        append(rec)

    def tap_val(step, val_loss):
        probe._tapped[1].append((int(step), float(val_loss)))
        add_val(step, val_loss)
    h.append, h.add_val = tap_append, tap_val


def _record(probes, program: Path, path: Path) -> None:
    """Pickle the probes' records (see benchmarks/replay.py); names are <case>/<program>[#k]."""
    import pickle
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from replay import recording_of
    name = f"{program.parent.name}/{program.stem}"
    recs = [recording_of(p, name + (f"#{k}" if k else ""), taps=getattr(p, "_tapped", None))
            for k, p in enumerate(probes)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        pickle.dump(recs, fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("program")
    ap.add_argument("--framework", required=True, choices=("keras", "torch", "paddle"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--record", help="also pickle each probe's records here, for benchmarks/replay.py")
    args = ap.parse_args(argv)
    program = Path(args.program).resolve()
    out = Path(args.out).resolve()

    import lossprobe
    probes: list = []
    original = lossprobe.attach

    def attach(model, **kwargs):
        probe = original(model, **kwargs)   # the program's own config: a recording changes nothing
        if args.record:
            _tap(probe)
        probes.append(probe)
        return probe
    lossprobe.attach = attach

    result: dict = {"program": str(program), "framework": args.framework, "seed": args.seed,
                    "ran": False, "error": None}
    t0 = time.perf_counter()
    try:
        _seed_everything(args.framework, args.seed)
        _auto_attach(args.framework, attach)
        os.chdir(program.parent)
        sys.path.insert(0, str(program.parent))
        sys.argv = [str(program)]
        runpy.run_path(str(program), run_name="__main__")
        result["ran"] = True
    except SystemExit as exc:
        result["ran"] = exc.code in (None, 0)
        if not result["ran"]:
            result["error"] = f"SystemExit({exc.code})"
    except BaseException:
        result["error"] = traceback.format_exc(limit=8)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    summaries = []
    for probe in probes:
        try:
            probe.detach()
            summaries.append(_summary(probe))
        except Exception:
            summaries.append({"error": traceback.format_exc(limit=4)})
    result["probes"] = summaries
    out.write_text(json.dumps(result, indent=1))
    if args.record:
        _record(probes, program, Path(args.record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
