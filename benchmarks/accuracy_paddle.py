"""Diagnosis accuracy for the Paddle backend: every scenario of ``tests/paddle/test_paddle.py``
(``SCENARIOS``), trained both in a dygraph loop (``run_dygraph``) and in ``paddle.Model.fit``
(``run_fit``), scored.

Runs in a process of its own (TensorFlow and Paddle must not share one; torch is not imported)::

    python benchmarks/accuracy_paddle.py                # every scenario, both ways to train
    python benchmarks/accuracy_paddle.py -k nan_loss -q
    python benchmarks/accuracy.py --frameworks paddle   # the same, from the driver

Scenario names: ``<code>/dygraph``, ``<code>/fit``, ``healthy/dygraph``, ``healthy/fit``.
A faulty scenario is detected when its expected codes are found; a critical code outside the
scenario's ``expect + allow`` is a false alarm (the suite's own contract), and so is any
warning/critical finding on a healthy run. The last stdout line is ``RESULT {json}``.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "paddle"))

if "tensorflow" in sys.modules:  # pragma: no cover - importing Paddle after TensorFlow segfaults
    raise RuntimeError("accuracy_paddle.py must run in a process without TensorFlow")

import paddle  # noqa: E402,F401

import lossprobe  # noqa: E402
from accuracy import apply_config_overrides, parse_sets, runner_args, score_scenarios, select  # noqa: E402


def scenarios():
    """``(name, expect, allow, run)`` for every scenario of the Paddle suite, both ways to train."""
    import test_paddle as tp
    items = []
    for way, runner in (("dygraph", tp.run_dygraph), ("fit", tp.run_fit)):
        items += [(f"{sc.name}/{way}", tuple(sc.expect), tuple(sc.allow), lambda sc=sc, r=runner: r(sc))
                  for sc in tp.SCENARIOS]
    return items


def main(argv: list[str] | None = None) -> int:
    args = runner_args(__doc__.splitlines()[0], argv)
    apply_config_overrides(lossprobe, parse_sets(args.set))
    items = scenarios()
    keep = select([i[0] for i in items], args.k)
    res = score_scenarios([i for i in items if i[0] in keep], quiet=args.quiet)
    res["framework"] = "paddle"
    assert "tensorflow" not in sys.modules and "torch" not in sys.modules
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
