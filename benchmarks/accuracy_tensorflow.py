"""Diagnosis accuracy for the TensorFlow / Keras backend: the planted faults and healthy runs of
``tests/tf/test_keras.py`` (``model.fit`` and custom ``GradientTape`` loops), scored.

Runs in a process of its own (TensorFlow and Paddle must not share one; torch is not imported)::

    python benchmarks/accuracy_tensorflow.py            # every scenario
    python benchmarks/accuracy_tensorflow.py -k dead_relu -q
    python benchmarks/accuracy.py --frameworks tensorflow   # the same, from the driver

Scenario names: ``<code>/fit``, ``<code>/tape``, ``healthy/fit-<name>``, ``healthy/tape-<name>``,
and the corrected twins ``twin/<code>/fit``, ``twin/<code>/tape`` (each planted fault's run
with its one mistake fixed: ``FIT_FAULTS[code](fixed=True)``).
A faulty scenario is detected when its code is found; a healthy one or a twin is a false alarm
on any warning/critical finding (and a twin must learn). The suite declares no "allowed
consequence" codes, so other critical codes on a faulty run are listed as notes, not alarms.
The last stdout line is ``RESULT {json}`` (see ``accuracy.score_scenarios``).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "tf"))

import tensorflow as tf  # noqa: E402

# one thread, as tests/tf/conftest.py does: set before TensorFlow runs its first op
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

from accuracy import runner_main  # noqa: E402


def scenarios():
    """``(name, expect, allow, run)`` for every scenario of the TensorFlow suite, twins included."""
    import test_keras as tk
    items = []
    for table, way in ((tk.FIT_FAULTS, "fit"), (tk.TAPE_FAULTS, "tape")):
        items += [(f"{code}/{way}", (code,), None, run) for code, run in table.items()]
    items += [(name, (), None, functools.partial(run, fixed=True)) for name, run in tk.TWINS.items()]
    for table, way in ((tk.FIT_HEALTHY, "fit"), (tk.TAPE_HEALTHY, "tape")):
        items += [(f"healthy/{way}-{name}", (), None, run) for name, run in table.items()]
    return items


def main(argv: list[str] | None = None) -> int:
    return runner_main("tensorflow", __doc__, scenarios, argv, foreign=("paddle", "torch"))


if __name__ == "__main__":
    sys.exit(main())
