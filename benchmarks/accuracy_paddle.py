"""Diagnosis accuracy for the Paddle backend: every scenario of ``tests/paddle/test_paddle.py``
(``SCENARIOS``) and every corrected twin (``TWINS``: each planted fault's recipe with its one
mistake fixed), trained both in a dygraph loop (``run_dygraph``) and in ``paddle.Model.fit``
(``run_fit``), scored.

Runs in a process of its own (TensorFlow and Paddle must not share one; torch is not imported)::

    python benchmarks/accuracy_paddle.py                # every scenario, both ways to train
    python benchmarks/accuracy_paddle.py -k nan_loss -q
    python benchmarks/accuracy.py --frameworks paddle   # the same, from the driver

Scenario names: ``<code>/dygraph``, ``<code>/fit``, ``healthy/dygraph``, ``healthy/fit``,
``twin/<code>/dygraph``, ``twin/<code>/fit``.
A faulty scenario is detected when its expected codes are found; a critical code outside the
scenario's ``expect + allow`` is a false alarm (the suite's own contract), and so is any
warning/critical finding on a healthy run or a twin (which must also learn). The last stdout
line is ``RESULT {json}``.
"""
from __future__ import annotations

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

from accuracy import runner_main  # noqa: E402


def scenarios():
    """``(name, expect, allow, run)`` for every scenario and twin of the Paddle suite, both ways to train."""
    import test_paddle as tp
    items = []
    for way, runner in (("dygraph", tp.run_dygraph), ("fit", tp.run_fit)):
        items += [(f"{sc.name}/{way}", tuple(sc.expect), tuple(sc.allow), lambda sc=sc, r=runner: r(sc))
                  for sc in tp.SCENARIOS + tp.TWINS]
    return items


def main(argv: list[str] | None = None) -> int:
    return runner_main("paddle", __doc__, scenarios, argv, foreign=("tensorflow", "torch"))


if __name__ == "__main__":
    sys.exit(main())
