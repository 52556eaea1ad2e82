"""The cross-backend contract: the same small MLP with the same weights and the same batches
in PyTorch, Keras and Paddle produces the same StepRecord fields at the same steps.

Each framework trains in a process of its own (``tests/contract/record.py``; TensorFlow then
Paddle in one process segfaults) and saves its records; this test compares them: every
field measured at the same steps (the same sampled steps, the same unmeasured ones) and
equal within float tolerance -- loss, per-layer gradient norms, activation dead/saturation
shares and scale, logit statistics, update ratios, parameter norms, input and target
statistics -- and the same facts (classes, loss kind, output activation, optimizer).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lossprobe.record import ACTIVATION_FIELDS, MASK_FIELDS, PARAM_FIELDS, SCALAR_FIELDS

RECORD = Path(__file__).parent / "contract" / "record.py"
FRAMEWORKS = ("torch", "tensorflow", "paddle")
# Keras' fit cannot carry gradients over from one step to the next: not measured there
NOT_MEASURED = {("tensorflow", "grad_carried")}
FACTS = ("n_classes", "loss_kind", "loss_from_logits", "output_activation", "output_units",
         "output_activation_index", "in_optimizer", "dropout_rates", "kinds", "n_params", "health")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("contract")
    runs = {fw: subprocess.Popen([sys.executable, str(RECORD), fw, str(out / f"{fw}.npz")],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for fw in FRAMEWORKS}
    for fw, proc in runs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{fw} run failed:\n{err[-3000:]}"
    return {fw: np.load(out / f"{fw}.npz") for fw in FRAMEWORKS}


@pytest.mark.parametrize("field", ("steps",) + SCALAR_FIELDS + PARAM_FIELDS + MASK_FIELDS + ACTIVATION_FIELDS)
def test_every_backend_records_the_same_field(records, field):
    ref = np.asarray(records["torch"][field], float)
    assert ref.size and np.isfinite(ref).any() or field in ("bn_eval_in_train",), f"{field}: never measured"
    for fw in FRAMEWORKS[1:]:
        got = np.asarray(records[fw][field], float)
        if (fw, field) in NOT_MEASURED:
            assert np.isnan(got).all(), (fw, field)
            continue
        assert got.shape == ref.shape, (fw, field)
        # measured at the same steps (nan = not measured) ...
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"{fw} {field}: measured at other steps")
        # ... to the same value, within float tolerance (summation orders differ between frameworks)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4, equal_nan=True, err_msg=f"{fw} {field}")


def test_every_backend_learns_the_same_facts(records):
    facts = {fw: json.loads(str(records[fw]["facts"])) for fw in FRAMEWORKS}
    for name in FACTS:
        assert len({json.dumps(facts[fw][name]) for fw in FRAMEWORKS}) == 1, (name, {fw: facts[fw][name] for fw in facts})
    assert facts["torch"]["n_classes"] == 4 and facts["torch"]["health"] == "healthy"
    assert all(facts[fw]["output_layer"] for fw in FRAMEWORKS)
