"""Columns.combine: several replicas' rows of one step become one row, each field as
capture.spec's RANK_COMBINE says (framework-free; the TF MirroredStrategy path uses it)."""
import math

import numpy as np

from lossprobe.capture.buffer import Columns
from lossprobe.capture.spec import LOCAL, RANK_COMBINE
from lossprobe.record import Layout


def _cols() -> Columns:
    return Columns(Layout(framework="test", activations=["a"], kinds=["relu"], params=["w", "b"],
                          param_sizes=[4, 2], is_weight=[True, False]))


def _row(cols: Columns, **fields) -> np.ndarray:
    row = cols.empty_row()
    for name, value in fields.items():
        span = cols.span(name) if name in ("grad", "act") else [cols.field(name)]
        row[span] = value
    return row


def test_each_field_combines_as_the_spec_declares():
    cols = _cols()
    r0 = _row(cols, loss=1.0, loss_seen=1.0, batch_size=32, input_abs_max=2.0, target_min=1.0, lr=0.1,
              input_nonfinite=0.0, grad=[3.0, 4.0], act=[0.5, 0.0, 1.0])
    r1 = _row(cols, loss=3.0, loss_seen=1.0, batch_size=30, input_abs_max=5.0, target_min=0.0, lr=0.1,
              input_nonfinite=1.0, grad=[9.0, 9.0], act=[0.1, 0.0, 2.0])
    rec = cols.decode(0, cols.combine(np.stack([r0, r1])))
    assert RANK_COMBINE["loss"] == "mean" and rec.loss == 2.0
    assert RANK_COMBINE["batch_size"] == "sum" and rec.batch_size == 62
    assert RANK_COMBINE["input_abs_max"] == "max" and rec.input_abs_max == 5.0
    assert RANK_COMBINE["target_min"] == "min" and rec.target_min == 0.0
    assert rec.input_nonfinite == 1.0          # a non-finite batch on either replica
    # LOCAL fields, and the per-parameter norms (replicas hold whole, identical copies of each
    # tensor: the L2 combine of distinct shards is the FSDP path's), are the first replica's
    assert list(rec.param_grad_norms) == [3.0, 4.0]
    assert RANK_COMBINE["act_dead"] == LOCAL and rec.act_dead[0] == 0.5 and rec.lr == 0.1


def test_a_nan_loss_on_one_replica_is_the_steps_and_one_row_is_itself():
    cols = _cols()
    r0, r1 = _row(cols, loss=1.0, loss_seen=1.0), _row(cols, loss=math.nan, loss_seen=1.0)
    assert math.isnan(cols.decode(0, cols.combine(np.stack([r0, r1]))).loss)
    np.testing.assert_array_equal(cols.combine(r0[None]), r0)
