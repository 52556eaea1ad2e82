"""What the torch backend learns from the autograd graph: the activation that reaches the loss
(also through an expression the program writes), and the class count from the tensor a
class-index loss receives."""
import torch
import torch.nn.functional as F
from torch import nn

import lossprobe


def _run(model, loss_of, steps=3, x=None, y=None):
    torch.manual_seed(0)
    x = torch.randn(16, 8) if x is None else x
    y = torch.randint(0, 4, (16,)) if y is None else y
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with lossprobe.attach(model, optimizer=opt, sinks=[]) as probe:
        for _ in range(steps):
            loss = loss_of(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
    return probe.history.facts


def test_log_of_softmax_written_by_hand_reaches_nll_as_log_softmax():
    model = nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=1))
    nll = nn.NLLLoss()
    facts = _run(model, lambda p, y: nll(torch.log(p + 1e-7), y))
    assert facts.output_activation == "softmax" and facts.loss_input_activation == "log_softmax"
    assert facts.loss_kind == "nll"


def test_a_sigmoid_inside_the_loss_call_is_what_the_loss_receives():
    model = nn.Linear(8, 1)
    facts = _run(model, lambda out, y: F.binary_cross_entropy_with_logits(torch.sigmoid(out), y.float()[:, None] % 2))
    assert facts.loss_kind == "bce_logits" and facts.loss_input_activation == "sigmoid"


def test_classes_come_from_the_dimension_the_loss_reads():
    # a segmentation-style output (N, C, H, W): the last dimension is the width, not the classes
    model = nn.Conv2d(3, 5, 1)
    ce = nn.CrossEntropyLoss()
    x, y = torch.randn(2, 3, 6, 7), torch.randint(0, 5, (2, 6, 7))
    facts = _run(model, lambda out, t: ce(out, t), x=x, y=y)
    assert facts.n_classes == 5
