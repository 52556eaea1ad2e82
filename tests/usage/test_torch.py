"""Usage suite, PyTorch: training code as people really write it, with the probe attached.

Each test trains a small real model and asserts that the user's code behaves as without
the probe (the same weights, bit for bit, where the run is deterministic) and that a
healthy run stays healthy. The patterns come from issue 12 (what broke when a new user
tried them) and from common training loops: EMA copies, whole-model checkpoints, sparse
embeddings, hand-reduced and functional losses, several probed models, FSDP2, gradient
checkpointing, distillation, GANs, gradient accumulation, AMP, torch.compile and
Hugging Face-style output objects.
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import socket
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossprobe
from torch_helpers import X, Y, mlp

BATCH = 32


def batches(steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, 1400, (BATCH,), generator=g)
        yield X[idx], Y[idx]


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def twice(train):
    """Run ``train(probed)`` without and with the probe; return (plain model, probed model, probe)."""
    plain, _ = train(False)
    probed, probe = train(True)
    return plain, probed, probe


def attach(model, probed: bool, **kw):
    kw.setdefault("sinks", [])
    return lossprobe.attach(model, **kw) if probed else None


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def assert_healthy(probe, steps: int):
    h = probe.history
    assert h.n_steps == steps
    assert probe.health == "healthy", [(f.code, f.evidence) for f in probe.findings]


# -- copies and checkpoints of a model while it is probed (issue 12) ------------------------
def test_deepcopy_while_attached_ema_trains_as_without_probe():
    def train(probed):
        torch.manual_seed(0)
        model = mlp()
        ema = copy.deepcopy(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = attach(model, probed, optimizer=opt)
        for x, y in batches(60):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            with torch.no_grad():
                for e, p in zip(ema.parameters(), model.parameters()):
                    e.mul_(0.9).add_(p, alpha=0.1)
        snapshot = copy.deepcopy(model)            # EMA re-initialised from the probed model (timm, YOLO)
        if probe is not None:
            assert hook_count(snapshot) == 0      # the copy carries no probe
            snapshot(X[:4])                       # and its forward is not a step of the probe
            probe.detach()
        return (model, ema, snapshot), probe

    (m0, e0, s0), ((m1, e1, s1), probe) = train(False)[0], train(True)
    assert same_weights(m0, m1) and same_weights(e0, e1) and same_weights(s0, s1)
    assert_healthy(probe, 60)


def test_torch_save_and_pickle_of_the_whole_model_while_attached(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    for step, (x, y) in enumerate(batches(40)):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step == 20:
            torch.save(model, tmp_path / "whole.pt")   # a whole-model checkpoint mid-training
            blob = pickle.dumps(model)
    probe.detach()
    for loaded in (torch.load(tmp_path / "whole.pt", weights_only=False), pickle.loads(blob)):
        assert hook_count(loaded) == 0
        assert loaded(X[:4]).shape == (4, 10)
    assert_healthy(probe, 40)


# -- gradients the backend cannot read: unmeasured, never non-finite (issue 12) ------------
class BagOfWords(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(17, 16, sparse=True)
        self.head = nn.Linear(16, 10)

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


def test_sparse_embedding_gradient_is_unmeasured_not_a_fault(caplog):
    tokens = (X * 16).long()   # digits' 64 pixel intensities (0..16) as a bag of tokens
    torch.manual_seed(0)
    model = BagOfWords()
    opts = [torch.optim.SparseAdam([model.emb.weight], lr=1e-2), torch.optim.Adam(model.head.parameters(), lr=1e-2)]
    cfg = lossprobe.Config(on_critical="raise", flush_every=10)
    with caplog.at_level(logging.WARNING, logger="lossprobe"):
        probe = lossprobe.attach(model, config=cfg, sinks=[])
        g = torch.Generator().manual_seed(0)
        for _ in range(60):                       # on_critical="raise" must not abort this healthy run
            idx = torch.randint(0, 1400, (BATCH,), generator=g)
            loss = F.cross_entropy(model(tokens[idx]), Y[idx])
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
        probe.detach()
    h = probe.history
    emb = list(probe.layout.params).index("emb.weight")
    unmeasured = h.matrix("param_grad_unmeasured")
    assert unmeasured[:, emb].all() and not unmeasured[:, [i for i in range(unmeasured.shape[1]) if i != emb]].any()
    assert np.isfinite(h.matrix("param_grad_norms")[:, emb + 1:]).all()
    assert "nonfinite_gradients" not in {f.code for f in probe.findings}
    said = [r.getMessage() for r in caplog.records if "unmeasured" in r.getMessage()]
    assert len(said) == 1 and "emb.weight" in said[0]          # said once in the log
    assert h.n_steps > 0 and probe.health != "critical"


# -- a loss that reaches backward() is the loss (issue 12) ----------------------------------
def _loss_run(make_loss, steps=40, probed=True):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = attach(model, probed)
    losses = []
    for x, y in batches(steps):
        loss = make_loss(model, x, y)
        losses.append(loss.item())
        opt.zero_grad(); loss.backward(); opt.step()
    if probe is not None:
        probe.detach()
    return model, probe, losses


def test_reduction_none_averaged_by_hand_is_captured():
    make = lambda m, x, y: nn.CrossEntropyLoss(reduction="none")(m(x), y).mean()
    plain, _, _ = _loss_run(make, probed=False)
    model, probe, losses = _loss_run(make)
    assert same_weights(plain, model)
    h = probe.history
    assert (h.series("loss_seen") == 1).all()
    assert h.series("loss") == pytest.approx(losses, rel=1e-5)   # the mean, not the per-sample module output


def test_functional_loss_needs_no_observe_line():
    _, probe, losses = _loss_run(lambda m, x, y: F.cross_entropy(m(x), y))
    h = probe.history
    assert h.series("loss") == pytest.approx(losses, rel=1e-5)
    f = h.facts
    assert (f.loss_kind, f.loss_name, f.loss_from_logits) == ("cross_entropy", "F.cross_entropy", True)
    assert f.n_classes == 10 and f.output_activation == "linear"
    assert_healthy(probe, 40)


def test_loss_of_an_expression_of_a_probed_output_with_two_probed_models():
    torch.manual_seed(0)
    a, b = mlp(), mlp()
    oa, ob = (torch.optim.SGD(m.parameters(), lr=0.05) for m in (a, b))
    loss_fn = nn.CrossEntropyLoss()
    pa, pb = (lossprobe.attach(m, optimizer=o, sinks=[]) for m, o in ((a, oa), (b, ob)))
    la, lb = [], []
    for x, y in batches(30):
        loss_a = loss_fn(a(x), y)
        loss_b = loss_fn(b(x) / 2, y)        # an expression of b's output: the module hook cannot tell
        la.append(loss_a.item()); lb.append(loss_b.item())
        for o, l in ((oa, loss_a), (ob, loss_b)):
            o.zero_grad(); l.backward(); o.step()
    pa.detach(); pb.detach()
    assert pa.history.series("loss") == pytest.approx(la, rel=1e-5)
    assert pb.history.series("loss") == pytest.approx(lb, rel=1e-5)   # b's loss, caught at backward()


def test_observe_after_backward_is_not_counted_twice():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=lossprobe.Config(activation_every=1))
    for x, y in batches(20):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        probe.observe(loss, targets=y)       # the README's line, after the step
    probe.detach()
    h = probe.history
    assert h.n_steps == 20 and (h.series("loss_seen") == 1).all()
    assert np.isfinite(h.series("target_mean")).all()     # the targets still arrive


# -- training patterns -------------------------------------------------------------------
class Checkpointed(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        return self.head(checkpoint(self.block, x, use_reentrant=False))


def test_gradient_checkpointing():
    def train(probed):
        torch.manual_seed(0)
        model = Checkpointed()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = attach(model, probed, optimizer=opt)
        for x, y in batches(50):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
        if probe:
            probe.detach()
        return model, probe
    plain, probed, probe = twice(train)
    assert same_weights(plain, probed)
    assert_healthy(probe, 50)
    assert np.isfinite(probe.history.matrix("act_dead")).any()   # activations seen inside the checkpoint


def test_teacher_student_distillation():
    torch.manual_seed(0)
    teacher, student = mlp(width=128), mlp(width=32)
    topt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for x, y in batches(80, seed=1):                       # a teacher trained beforehand
        l = F.cross_entropy(teacher(x), y); topt.zero_grad(); l.backward(); topt.step()
    teacher.eval()
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    pt = lossprobe.attach(teacher, sinks=[])
    ps = lossprobe.attach(student, optimizer=opt, sinks=[])
    losses = []
    for x, y in batches(60):
        with torch.no_grad():
            soft = F.softmax(teacher(x) / 2, -1)
        out = student(x)
        loss = 0.5 * F.cross_entropy(out, y) + 0.5 * F.kl_div(F.log_softmax(out / 2, -1), soft, reduction="batchmean")
        losses.append(loss.item())
        opt.zero_grad(); loss.backward(); opt.step()
    pt.detach(); ps.detach()
    assert pt.history.n_steps == 0                         # the frozen teacher never trains
    assert ps.history.series("loss") == pytest.approx(losses, rel=1e-5)
    assert_healthy(ps, 60)


def test_an_unprobed_model_trained_beside_the_probed_one_keeps_its_losses():
    """Only one model is probed; a second one (a baseline, an auxiliary network) trains in the
    same loop through the same kind of loss module. Its losses are not the probed model's;
    an expression of the probed output (log_softmax, then NLLLoss) still is."""
    torch.manual_seed(0)
    model, other = mlp(), mlp(width=32)
    opt, oopt = torch.optim.SGD(model.parameters(), lr=0.05), torch.optim.SGD(other.parameters(), lr=0.05)
    nll, ce = nn.NLLLoss(), nn.CrossEntropyLoss()
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    losses = []
    for x, y in batches(40):
        loss = nll(F.log_softmax(model(x), -1), y)
        losses.append(loss.item())
        opt.zero_grad(); loss.backward(); opt.step()
        other_loss = ce(other(x) * 3.0, y)          # never the probed model's loss
        oopt.zero_grad(); other_loss.backward(); oopt.step()
    probe.detach()
    h = probe.history
    assert h.n_steps == 40
    assert h.series("loss") == pytest.approx(losses, rel=1e-5)
    assert h.facts.loss_kind == "nll" and probe.validation_losses_seen == 0
    assert_healthy(probe, 40)


def test_a_loop_that_changes_how_it_calls_backward_keeps_every_loss():
    """On unsampled steps of a loop that backpropagates its loss module's output, the model's
    output carries no backward hook. A step whose backward starts elsewhere -- a functional
    loss, a scaled module loss -- must still count as reaching the model, with its loss."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ce = nn.CrossEntropyLoss()
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    losses = []
    for i, (x, y) in enumerate(batches(60)):
        out = model(x)
        if i % 3 == 0:
            loss = ce(out, y)                   # the plain pattern: backward from the module loss
            opt.zero_grad(); loss.backward()
        elif i % 3 == 1:
            loss = F.cross_entropy(out, y)      # no loss hook sees it: the backward gives it
            opt.zero_grad(); loss.backward()
        else:
            loss = ce(out, y)                   # the hook's loss, but backward from another tensor
            opt.zero_grad(); (loss * 2.0).backward()
        opt.step()
        losses.append(loss.item())
    probe.detach()
    h = probe.history
    assert h.n_steps == 60
    assert (h.series("loss_seen") > 0).all()
    assert h.series("loss") == pytest.approx(losses, rel=1e-5)
    assert_healthy(probe, 60)


def test_a_loss_module_made_every_step_is_remembered_in_bounded_memory():
    """``nn.CrossEntropyLoss()(out, y)`` builds a new loss module each step. The probe knows
    loss modules by identity (a weakref per entry); entries of dead modules must not pile up
    over a long run, and every step still has its loss."""
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[])
    for x, y in batches(300):
        loss = nn.CrossEntropyLoss()(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    backend = probe._backend
    probe.detach()
    assert (probe.history.series("loss_seen") > 0).all() and probe.history.n_steps == 300
    assert len(backend._loss_facts) <= backend.KNOWN_PRUNE + 1
    # addresses of freed modules are often reused; with 200 alive at once, they are not
    alive = [nn.CrossEntropyLoss() for _ in range(200)]
    for m in alive:
        backend._remember(backend._loss_facts, m, {})
    assert len(backend._loss_facts) >= 200
    del alive, m
    backend._remember(backend._loss_facts, nn.MSELoss(), {})
    assert len(backend._loss_facts) == 1


def test_gan_with_two_optimizers():
    def train(probed):
        torch.manual_seed(0)
        G = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
        D = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 1))
        og, od = torch.optim.Adam(G.parameters(), lr=1e-3), torch.optim.Adam(D.parameters(), lr=1e-3)
        pg, pd = attach(G, probed, optimizer=og), attach(D, probed, optimizer=od)
        bce = nn.BCEWithLogitsLoss()
        g = torch.Generator().manual_seed(0)
        for _ in range(40):
            real = torch.randn(64, 2, generator=g) * 0.5 + 2.0
            fake = G(torch.randn(64, 8, generator=g))
            d_loss = bce(D(real), torch.ones(64, 1)) + bce(D(fake.detach()), torch.zeros(64, 1))
            od.zero_grad(); d_loss.backward(); od.step()
            g_loss = bce(D(fake), torch.ones(64, 1))
            og.zero_grad(); g_loss.backward(); og.step()
        for p in (pg, pd):
            if p:
                p.detach()
        return (G, D), (pg, pd)
    (g0, d0), ((g1, d1), (pg, pd)) = train(False)[0], train(True)
    assert same_weights(g0, g1) and same_weights(d0, d1)
    assert pg.history.n_steps == 40 and pd.history.n_steps == 40
    assert (pg.history.series("loss_seen") == 1).all()     # G's loss comes through D's output: caught at backward
    assert pg.health != "critical" and pd.health != "critical"


def test_gradient_accumulation_counts_optimizer_steps_and_carries_nothing():
    def train(probed):
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        probe = attach(model, probed, optimizer=opt, config=lossprobe.Config(activation_every=1))
        data = batches(120)
        for _ in range(30):
            opt.zero_grad()
            for _ in range(4):                    # 4 micro-batches per optimizer step
                x, y = next(data)
                (F.cross_entropy(model(x), y) / 4).backward()
            opt.step()
        if probe:
            probe.detach()
        return model, probe
    plain, probed, probe = twice(train)
    assert same_weights(plain, probed)
    h = probe.history
    assert h.n_steps == 30 and (h.series("loss_seen") == 1).all()
    assert (h.series("grad_carried") == 0).all()            # zeroed before the first micro-batch


def test_loop_that_never_zeroes_gradients_carries_them():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=lossprobe.Config(activation_every=1))
    for x, y in batches(30):
        F.cross_entropy(model(x), y).backward()   # no zero_grad(): gradients pile up across steps
        opt.step()
    probe.detach()
    carried = probe.history.series("grad_carried")
    assert carried[0] == 0 and np.median(carried[10:]) > 0.8


def test_amp_bf16_autocast_on_cpu_and_grad_scaler():
    def train(probed, scaled):
        torch.manual_seed(0)
        model = mlp()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu") if scaled else None
        probe = attach(model, probed, optimizer=opt)
        losses = []
        for x, y in batches(40):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            losses.append(loss.item())
            opt.zero_grad()
            if scaler:
                scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
            else:
                loss.backward(); opt.step()
        if probe:
            probe.detach()
        return model, probe, losses
    for scaled in (False, True):
        plain, _, _ = train(False, scaled)
        probed, probe, losses = train(True, scaled)
        assert same_weights(plain, probed)
        assert probe.history.n_steps == 40 and probe.health != "critical"
        assert probe.history.series("loss") == pytest.approx(losses, rel=1e-3)   # the loss, not the scaled one
        assert probe.history.facts.output_units == 10


def test_torch_compile_with_a_functional_loss():
    torch._dynamo.reset()

    def train(probed):
        torch.manual_seed(0)
        model = torch.compile(mlp(), backend="aot_eager")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = attach(model, probed, optimizer=opt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for x, y in batches(30):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(); loss.backward(); opt.step()
        if probe:
            probe.detach()
        return model, probe
    plain, probed, probe = twice(train)
    assert same_weights(plain, probed)
    assert (probe.history.series("loss_seen") == 1).all()


@dataclass
class ModelOutput:                 # the shape of a Hugging Face output object
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class HFStyle(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x, labels=None):
        logits = self.body(x)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss)


def test_hugging_face_style_output_object():
    torch.manual_seed(0)
    model = HFStyle()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=lossprobe.Config(activation_every=1))
    losses = []
    for x, y in batches(40):
        out = model(x, labels=y)
        losses.append(out.loss.item())
        opt.zero_grad(); out.loss.backward(); opt.step()
    probe.detach()
    h = probe.history
    assert h.series("loss") == pytest.approx(losses, rel=1e-5)
    assert np.isfinite(h.series("logit_std")).all() and h.facts.n_classes == 10
    assert_healthy(probe, 40)


# -- FSDP2 (issue 12): no crash; sharded (DTensor) gradients are read through their shards --
# (their combination across ranks is tested against an unsharded model in tests/test_fsdp.py)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        from torch.distributed.fsdp import fully_shard
        torch.manual_seed(0)
        model = mlp()
        fully_shard(model[0])
        fully_shard(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        cfg = lossprobe.Config(flush_every=5, on_critical="raise")
        probe = lossprobe.attach(model, optimizer=opt, sinks=[], config=cfg)
        for x, y in batches(25, seed=rank):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
        probe.detach()
        h = probe.history
        np.savez(os.path.join(out, f"rank{rank}.npz"), steps=h.n_steps, loss_seen=h.series("loss_seen"),
                 unmeasured=h.matrix("param_grad_unmeasured"), grad_norm=h.series("grad_norm"),
                 health=probe.health)
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp2_fully_shard_trains_without_a_crash(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_fsdp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = np.load(tmp_path / f"rank{rank}.npz")
        assert int(r["steps"]) == 25 and (r["loss_seen"] == 1).all()
        assert not r["unmeasured"].any() and (r["grad_norm"] > 0).all()   # DTensor gradients: measured
        assert str(r["health"]) == "healthy"
