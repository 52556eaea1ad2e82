"""PyTorch backend: module hooks, optimizer step hooks, on-device reductions.

What runs per training step (all on the tensors' device, no host read):

* root forward pre-hook: opens the step, ``x.sum()`` of the input (a non-finite sum
  flags NaN/Inf inputs);
* root forward hook: ``|logits|.amax()``;
* a global module forward hook catches ``nn.Module`` losses (``nn.CrossEntropyLoss()``
  and friends): the loss and its targets, with no extra line in the user's loop;
  losses computed under ``no_grad()``/``eval()`` are validation losses;
* optimizer pre-step hook: ``torch._foreach_norm`` over all gradients -> one stacked
  tensor; the step boundary (a pending ``TrainingHealthError`` is raised here).

Every ``activation_every`` steps it also measures activation statistics (ReLU dead
share, sigmoid/tanh saturation, scale), logit saturation, input/target statistics and
update/weight ratios (weights snapshotted before ``optimizer.step()``).

Every ``flush_every`` steps all pending device values are concatenated and copied to
the host in one transfer (``n_host_reads`` counts them), then decoded into StepRecords.
"""
from __future__ import annotations

import math
import time
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.optim.optimizer as _optim_mod

from .base import CaptureGuard
from ..capture.facts import FactSheet, output_activation
from ..record import Flush, Layout, StepRecord

_ACTIVATION_KINDS: list[tuple[type, str]] = [
    (nn.ReLU, "relu"), (nn.ReLU6, "relu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"),
    (nn.Softmax, "softmax"), (nn.modules.batchnorm._BatchNorm, "batchnorm"),
]
_LOSS_KINDS: list[tuple[type, str]] = [
    (nn.CrossEntropyLoss, "cross_entropy"), (nn.NLLLoss, "nll"), (nn.BCEWithLogitsLoss, "bce_logits"),
    (nn.BCELoss, "bce"), (nn.MSELoss, "mse"), (nn.L1Loss, "mse"), (nn.SmoothL1Loss, "mse"), (nn.HuberLoss, "mse"),
]
_FROM_LOGITS = {"cross_entropy": True, "bce_logits": True, "nll": False, "bce": False}
_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()


def _kind_of(module: nn.Module, table) -> str | None:
    for cls, kind in table:
        if isinstance(module, cls):
            return kind
    return None


def _first_tensor(obj: Any) -> torch.Tensor | None:
    """The tensor a model's output (or input) most likely means: tensors as-is; dicts by
    'logits'/'output' keys, else the first floating tensor value; tuples/lists: first tensor."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict) or hasattr(obj, "keys"):
        for key in ("logits", "output", "out", "y_pred"):
            try:
                v = obj[key]
            except Exception:
                continue
            if isinstance(v, torch.Tensor):
                return v
        obj = list(obj.values()) if hasattr(obj, "values") else []
    if isinstance(obj, (list, tuple)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


class _Step:
    """One step's statistics while they still live on the device."""

    __slots__ = ("step", "sampled", "losses", "grad_norms", "grad_idx", "missing", "x_sum", "x_stats",
                 "out_max", "out_stats", "t_stats", "batch", "acts", "upd", "pnorm", "lr", "bn_eval",
                 "forwards", "auto_loss", "grad_scale", "tentative")

    def __init__(self, step: int, sampled: bool):
        self.step, self.sampled = step, sampled
        self.losses: list[Any] = []
        self.grad_norms = None
        self.grad_idx: list[int] = []
        self.missing: np.ndarray | None = None
        self.x_sum = self.x_stats = self.out_max = self.out_stats = self.t_stats = None
        self.batch = math.nan
        self.acts: dict[int, torch.Tensor] = {}
        self.upd = self.pnorm = None
        self.lr: Any = math.nan
        self.bn_eval = math.nan
        self.forwards = 0
        self.auto_loss = False
        self.grad_scale: np.ndarray | None = None
        self.tentative = False


class TorchBackend(CaptureGuard):
    framework = "torch"

    def __init__(self, model: nn.Module, optimizer=None, config=None):
        if model in _ATTACHED:
            raise RuntimeError(
                "lossprobe.attach: this model already has a probe attached; call probe.detach() "
                "on the first one (or use it as a context manager) before attaching again.")
        self.model = model
        self._disabled: set[str] = set()
        net = model
        # torch.compile(model): hooks inside the compiled graph would make dynamo guard on the
        # probe's per-step state (a recompile every step), so only the wrapper's own hooks
        # (eager, outside the graph), the loss hook and the optimizer hooks are used
        self.compiled = type(net).__name__ == "OptimizedModule" and isinstance(getattr(net, "_orig_mod", None), nn.Module)
        if self.compiled:
            net = net._orig_mod
        inner = getattr(net, "module", None)  # DataParallel / DDP wrappers
        self.net = inner if isinstance(inner, nn.Module) else net
        self.cfg = config
        self.optimizer = None
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self._param_ids = {id(p): i for i, p in enumerate(self.params)}
        # embedding tables are lookups, not layers: their gradient reaches only the rows a batch
        # used, so their per-element gradient/update scale says nothing about gradient flow
        emb = {id(m.weight) for m in self.net.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
        self.weight_idx = [i for i, p in enumerate(self.params) if p.ndim >= 2 and id(p) not in emb]
        acts = [(n, m, _kind_of(m, _ACTIVATION_KINDS)) for n, m in self.net.named_modules()]
        acts = [(n or "root", m, k) for n, m, k in acts if k and not self.compiled]
        self._act_modules = [m for _, m, _ in acts]
        self._bn_modules = [m for _, m, k in acts if k == "batchnorm"]
        self.cfg = config
        from . import torch_dist  # rank, world size and the rank table are known before the layout
        self.dist = self._safe("distributed", torch_dist.DistHelper.create, self)
        rank, world = torch_dist.publisher_rank(), torch_dist.rank_world()[1]
        self.layout = Layout(
            framework="torch", params=[n for n, _ in named], param_sizes=[p.numel() for p in self.params],
            activations=[n for n, _, _ in acts], kinds=[k for _, _, k in acts],
            is_weight=[i in set(self.weight_idx) for i in range(len(self.params))],
            activation_types=[type(m).__name__ for _, m, _ in acts],
            param_owner_types=[type(self.net.get_submodule(n.rpartition(".")[0])).__name__ for n, _ in named],
            rank=rank, world_size=world, extra=self.dist.layout_extra() if self.dist is not None else {})
        self.facts = FactSheet(dropout_rates=tuple(
            (n, float(m.p)) for n, m in self.net.named_modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0))
        self._module_names = {id(m): n for n, m in self.net.named_modules() if n}
        self.validation_losses_seen = 0
        self._handles: list[Any] = []
        self._step = 0
        self._cur: _Step | None = None
        self._pending: list[_Step] = []
        self._val_pending: list[tuple[int, Any]] = []
        self._val_sum: Any = None
        self._val_n = 0
        self._before: list[torch.Tensor] | None = None
        self._last_loss: Any = None
        self.n_host_reads = 0
        self._act_out: dict[int, int] = {}  # id(output tensor) -> activation index (this forward)
        self._last_out = None  # weakref to the model's latest output (tells our loss from another model's)
        self._producer: dict[int, str] = {}  # id(output tensor) -> name of the module that made it (sampled steps)
        if optimizer is not None:
            self._bind_optimizer(optimizer)

    # -- lifecycle ----------------------------------------------------------
    def start(self, channel) -> None:
        self.channel = channel
        _ATTACHED[self.model] = channel
        h = self._handles
        h.append(self.model.register_forward_pre_hook(self._root_pre, with_kwargs=True))
        h.append(self.model.register_forward_hook(self._root_post))
        for j, m in enumerate(self._act_modules):
            h.append(m.register_forward_hook(self._make_act_hook(j)))
        h.append(nn.modules.module.register_module_forward_hook(self._any_forward))
        if self.optimizer is None:
            # no optimizer given: find it at its first step (any optimizer holding our parameters)
            h.append(_optim_mod.register_optimizer_step_pre_hook(self._global_opt_pre))
            h.append(_optim_mod.register_optimizer_step_post_hook(self._global_opt_post))
        if self.dist is not None:  # torch_dist.py: per-rank summaries, noise scale
            self._safe("distributed", self.dist.start)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self.dist is not None:  # torch_dist.py
            self.dist.detach()
        _ATTACHED.pop(self.model, None)

    def finish(self) -> None:
        """At detach: a step that ran forward but saw no optimizer.step() still counts."""
        cur = self._cur
        if cur is not None and cur.tentative and cur.grad_norms is None:
            self._demote(cur)
            return
        if cur is not None and cur.forwards > 0:
            if cur.grad_norms is None:
                self._safe("gradients", self._read_grads, cur)
            self._close_step()

    def _bind_optimizer(self, opt) -> None:
        self.optimizer = opt
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        self.facts.learn(in_optimizer=tuple(id(p) in ids for p in self.params))
        self._handles.append(opt.register_step_pre_hook(self._opt_pre_hook))
        self._handles.append(opt.register_step_post_hook(lambda o, a, k: self._opt_post()))

    def _training(self) -> bool:
        """Could this forward/loss be a training step? Grad enabled, and the model in train
        mode - or in eval mode with an optimizer bound: a loop that forgot model.train() after
        validation still trains (tentatively, until optimizer.step() confirms it)."""
        return torch.is_grad_enabled() and (self.model.training or self.optimizer is not None)

    def _demote(self, cur: _Step) -> None:
        """An eval-mode forward that no optimizer.step() followed was validation after all."""
        for l in cur.losses:
            v = l.float() if isinstance(l, torch.Tensor) else float(l)
            self._val_sum = v if self._val_sum is None else self._val_sum + v
            self._val_n += 1
        if self._cur is cur:
            self._cur = None

    def _current(self) -> _Step:
        if self._cur is None:
            if len(self._pending) >= self.cfg.flush_every:
                self.flush()
            # one sampled step per block of k, at a rotating offset (0, 11, 22, ...): a fixed
            # phase would alias with periodic pipelines (alternating shards or tasks)
            k = self.cfg.activation_every
            self._cur = _Step(self._step, self._step % k == (self._step // k) % k)
        return self._cur

    # root forward: opens a step; inputs
    def _root_pre(self, module, args, kwargs):
        if self.channel is not None:
            self.channel.boundary(raise_pending=False)  # queued sink updates that must run on this thread
        if not self._training():
            return None
        tentative = not self.model.training
        prev = self._cur
        if prev is not None and prev.tentative and prev.forwards > 0 and prev.grad_norms is None:
            self._demote(prev)
        if self.optimizer is None and self._cur is not None and self._cur.forwards > 0 and self._cur.grad_norms is None:
            # forward-boundary mode (no optimizer seen yet): a new training forward ends the step
            self._safe("gradients", self._read_grads, self._cur)
            self._close_step()
        if self._val_n and not tentative:
            self._emit_val()
        cur = self._current()
        if cur.forwards == 0:
            cur.tentative = tentative
        cur.forwards += 1
        if cur.forwards == 1 and self.cfg.capture_inputs:
            self._safe("inputs", self._input_stats, cur, args, kwargs)
        if cur.sampled and self._bn_modules:
            cur.bn_eval = float(sum(1 for m in self._bn_modules if not m.training))
        self._act_out.clear()
        return None

    def _root_post(self, module, args, output):
        out = _first_tensor(output)
        self._last_out = weakref.ref(out) if out is not None else None
        if not self._training() or self._cur is None or not self.cfg.capture_outputs:
            return None
        self._safe("outputs", self._output_stats, self._cur, output)
        return None

    def _make_act_hook(self, j: int):
        def hook(module, args, output):
            cur = self._cur
            if cur is None or not cur.sampled or not self._training() or j in cur.acts:
                return None
            self._safe("activations", self._act_stats, cur, j, output)
            return None
        return hook

    def _any_forward(self, module, args, output):
        if isinstance(module, nn.modules.loss._Loss):
            self._safe("loss", self._capture_loss, module, args, output)
        elif self._cur is not None and self._cur.sampled and isinstance(output, torch.Tensor) \
                and not torch.compiler.is_compiling():
            name = self._module_names.get(id(module))
            if name is not None:
                self._producer[id(output)] = name  # which layer made the model's output
        return None

    def _global_opt_pre(self, opt, args, kwargs):
        if self.optimizer is None and any(id(p) in self._param_ids for g in opt.param_groups for p in g["params"]):
            self._bind_optimizer(opt)  # its own hooks fire from the next step; do this one here
            self._bound_now = True
            return self._opt_pre_hook(opt, args, kwargs)
        return None

    def _opt_pre_hook(self, opt, args, kwargs):
        """optimizer.step(): the step's gradients are read now, or -- when it is given a closure
        that runs forward and backward (LBFGS, Lightning) -- again when the closure returns."""
        self._opt_pre()
        closure = kwargs.get("closure", args[0] if args else None)
        if not callable(closure):
            return None

        def closure_then_read():
            out = closure()
            if self._cur is not None:
                self._safe("gradients", self._read_grads, self._cur)
            return out
        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_read}
        return (closure_then_read, *args[1:]), kwargs

    def _global_opt_post(self, opt, args, kwargs):
        if opt is self.optimizer and getattr(self, "_bound_now", False):
            self._bound_now = False
            self._opt_post()
        return None

    def _opt_pre(self) -> None:
        if self.channel is not None:
            self.channel.boundary()  # raises TrainingHealthError when on_critical="raise"
        if self._val_n:
            self._emit_val()
        cur = self._current()
        cur.tentative = False  # an optimizer step: this was training, whatever the module mode
        self._safe("gradients", self._read_grads, cur)
        lr = self.optimizer.param_groups[0].get("lr", math.nan) if self.optimizer else math.nan
        cur.lr = lr.detach() if isinstance(lr, torch.Tensor) else float(lr)
        if cur.sampled:
            self._safe("updates", self._snapshot, cur)

    def _opt_post(self) -> None:
        cur = self._cur
        if cur is None:
            return
        if cur.sampled and self._before is not None:
            self._safe("updates", self._update_ratios, cur)
        self._close_step()

    def _close_step(self) -> None:
        cur, self._cur = self._cur, None
        if cur is not None:
            self._pending.append(cur)
            self._step += 1

    # -- on-device reductions -----------------------------------------------------
    def _read_grads(self, cur: _Step) -> None:
        """Per-parameter gradient norms in one ``_foreach_norm`` call.

        On full-statistics steps (every ``activation_every``) the norms are exact. In between,
        a tensor larger than ``Config.grad_sample`` elements is read through a strided view of
        about that many elements and its norm scaled by sqrt(n / n_sampled): the norm of a
        large gradient costs a full pass over its memory (on a CPU as much as the optimizer's
        own update), while its scale - what the rules read - is estimated well from a sample.
        """
        grads, idx, missing = [], [], np.zeros(len(self.params), bool)
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                missing[i] = True
            else:
                grads.append(g)
                idx.append(i)
        cur.missing, cur.grad_idx = missing, idx
        if not grads:
            return
        budget = self.cfg.grad_sample
        if cur.sampled or budget <= 0:
            cur.grad_norms = torch._foreach_norm(grads)
            return
        views, scale = [], np.ones(len(grads))
        blocks = max(1, min(self.GRAD_BLOCKS, budget))
        width = max(1, budget // blocks)
        for k, g in enumerate(grads):
            n = g.numel()
            if n > budget and g.layout == torch.strided and g.is_contiguous():
                # `blocks` contiguous runs of `width` elements spread evenly over the tensor:
                # a few cache lines each, where a strided sample touches a line per element
                views.append(g.as_strided((blocks, width), (n // blocks, 1), g.storage_offset()))
                scale[k] = math.sqrt(n / (blocks * width))
            else:
                views.append(g)
        cur.grad_norms = torch._foreach_norm(views)  # 0-d tensors, stacked at the flush
        cur.grad_scale = scale

    GRAD_BLOCKS = 16  # contiguous runs per sampled gradient tensor
    ACT_SAMPLE = 65536  # activation values read for saturation and scale

    # Update/weight ratios are measured on a fixed random sample of at most UPDATE_SAMPLE
    # elements per weight tensor: |dW_S| / |W_S| estimates |dW| / |W| (numerator and
    # denominator shrink alike), and the cost no longer grows with the model.
    UPDATE_SAMPLE = 4096

    def _sample_index(self) -> list[torch.Tensor | None]:
        if getattr(self, "_upd_idx", None) is None:
            gen = torch.Generator().manual_seed(0)
            self._upd_idx = []
            for i in self.weight_idx or range(len(self.params)):
                p = self.params[i]
                n = p.numel()
                self._upd_idx.append(None if n <= self.UPDATE_SAMPLE else
                                     torch.randint(0, n, (self.UPDATE_SAMPLE,), generator=gen).to(p.device))
        return self._upd_idx

    def _sampled_weights(self) -> list[torch.Tensor]:
        out = []
        for i, idx in zip(self.weight_idx or range(len(self.params)), self._sample_index()):
            flat = self.params[i].detach().reshape(-1)
            out.append(flat.clone() if idx is None else flat.index_select(0, idx))
        return out

    def _snapshot(self, cur: _Step) -> None:
        self._before = self._sampled_weights()
        cur.pnorm = torch.stack(torch._foreach_norm([p.detach() for p in self.params])).float()

    def _update_ratios(self, cur: _Step) -> None:
        now = self._sampled_weights()
        dn = torch.stack(torch._foreach_norm(torch._foreach_sub(now, self._before))).float()
        wn = torch.stack(torch._foreach_norm(self._before)).float().clamp_min(1e-30)
        cur.upd = dn / wn
        self._before = None

    def _input_stats(self, cur: _Step, args, kwargs) -> None:
        x = _first_tensor(list(args) + list(kwargs.values()))
        if x is None or not x.is_floating_point() or x.numel() == 0:
            return
        x = x.detach()
        cur.x_sum = x.sum().float()
        if cur.sampled:
            xf = x.float()
            cur.x_stats = torch.stack([xf.abs().amax(), xf.mean(), xf.std() if xf.numel() > 1 else xf.sum() * 0])

    def _output_stats(self, cur: _Step, output) -> None:
        out = _first_tensor(output)
        if out is None:
            if "outputs-shape" not in self._disabled:
                self._disabled.add("outputs-shape")
                self._warn("outputs", f"model output of type {type(output).__name__} holds "
                           "no tensor; output statistics are off for this run")
            return
        if out.numel() == 0 or not out.is_floating_point():
            return
        if cur.sampled or not self.facts.knows("output_units"):
            self._learn_output(out)
        o = out.detach()
        if cur.sampled:
            cur.out_max = torch.linalg.vector_norm(o, ord=math.inf)  # max |logit| in one op
            of = o.float()
            if of.ndim >= 2 and of.shape[-1] >= 2:
                o2 = of.reshape(-1, of.shape[-1])
                p = torch.softmax(o2, -1)
                # saturated: the top class is exactly 1, or some class underflowed to exactly 0
                sat = ((p.amax(-1) >= 1.0) | (p.amin(-1) <= 0.0)).float().mean()
                prob = ((o2.amin(-1) >= 0) & (o2.amax(-1) <= 1) & ((o2.sum(-1) - 1).abs() < 1e-3)).float().mean()
            else:
                sat = prob = torch.full((), math.nan, device=o.device)
            std = of.std() if of.numel() > 1 else of.sum() * 0
            cur.out_stats = torch.stack([std, sat, prob, (~torch.isfinite(of)).sum().float()])

    def _learn_output(self, out: torch.Tensor) -> None:
        """Output width, its last activation (from the autograd node that made it), the layer."""
        activation = output_activation(out.grad_fn, lambda node: [n for n, _ in node.next_functions])
        self.facts.learn(output_units=int(out.shape[-1]) if out.ndim >= 1 else 1,
                         output_activation=activation or self.facts.facts.output_activation,
                         output_activation_index=self._act_out.get(id(out), -1),
                         output_layer=self._producer.get(id(out), self.facts.facts.output_layer))
        self._producer.clear()

    def _act_stats(self, cur: _Step, j: int, output) -> None:
        y = _first_tensor(output)
        if y is None or not y.is_floating_point() or y.numel() == 0:
            return
        self._act_out[id(y)] = j
        y = y.detach().float()
        kind = self.layout.kinds[j]
        nan = torch.full((), math.nan, device=y.device)
        dead = sat = nan
        if kind == "relu" and y.ndim >= 2:
            # a unit is a channel of a conv map (dim 1 of N,C,H,W), else a feature (last dim);
            # dead = its maximum over the whole batch (and positions) is <= 0
            unit_max = y.amax(dim=(0, 2, 3)) if y.ndim == 4 else y.reshape(-1, y.shape[-1]).amax(0)
            dead = (unit_max <= 0).float().mean()
        # saturation and scale from an evenly strided sample of at most ACT_SAMPLE values:
        # a share and a spread are estimated well from it, at a fraction of a full pass
        flat = y.reshape(-1)
        if flat.numel() > self.ACT_SAMPLE:
            flat = flat[:: flat.numel() // self.ACT_SAMPLE]
        if kind == "sigmoid":
            sat = ((flat < 1e-3) | (flat > 1 - 1e-3)).float().mean()
        elif kind == "tanh":
            sat = (flat.abs() > 1 - 1e-3).float().mean()
        scale = flat.std() if flat.numel() > 1 else nan
        cur.acts[j] = torch.stack([dead, sat, scale])

    def _capture_loss(self, module, args, output) -> None:
        if not isinstance(output, torch.Tensor) or output.numel() != 1:
            return
        loss = output.detach()
        if not self._training():
            if len(_ATTACHED) > 1 and not self._is_our_output(args[0] if args else None):
                return
            # validation: accumulate on device, emitted at the next training step
            self._val_sum = loss.float() if self._val_sum is None else self._val_sum + loss.float()
            self._val_n += 1
            self.validation_losses_seen += 1
            return
        if len(_ATTACHED) > 1 and not self._is_our_output(args[0] if args else None):
            return  # several probed models in one process (GAN, teacher-student): not this one's loss
        cur = self._current()
        kind = _kind_of(module, _LOSS_KINDS) or ""
        self.facts.learn(loss_kind=kind, loss_name=type(module).__name__, loss_from_logits=_FROM_LOGITS.get(kind))
        cur.losses.append(loss)
        cur.auto_loss = True
        self._last_loss = output
        if cur.sampled and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            self._target_stats(cur, args[1])

    def _is_our_output(self, t) -> bool:
        """Is ``t`` this model's last output, or a view of it (``out.view(-1)``, ``out[:, 0]``)?"""
        ref = self._last_out() if self._last_out is not None else None
        return isinstance(t, torch.Tensor) and ref is not None and (t is ref or t._base is ref)

    def _target_stats(self, cur: _Step, y: torch.Tensor) -> None:
        y = y.detach()
        if y.numel() == 0:
            return
        cur.batch = float(y.shape[0]) if y.ndim else 1.0
        c = self.facts.facts.output_units
        yf = y.float()
        if not y.is_floating_point() and c >= 2:
            flat = y.reshape(-1).clamp(0, c - 1)
            counts = torch.zeros(c, device=y.device).scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
            distinct, is_index = (counts > 0).sum().float(), torch.ones((), device=y.device)
        else:
            distinct = torch.full((), math.nan, device=y.device)
            is_index = torch.zeros((), device=y.device) if y.is_floating_point() else torch.ones((), device=y.device)
        cur.t_stats = torch.stack([yf.amin(), yf.amax(), distinct, is_index])

    # -- observe() -------------------------------------------------------------------
    def observe(self, loss, targets, val_loss, gradients, step) -> None:
        if val_loss is not None:
            v = val_loss.detach().float().reshape(()) if isinstance(val_loss, torch.Tensor) else float(val_loss)
            self._val_pending.append((self._last_step(), v))
        if loss is None and targets is None:
            return
        if loss is not None and not self._training() and not (isinstance(loss, torch.Tensor) and loss.requires_grad):
            # a loss computed in eval()/no_grad() is validation, never training loss
            if val_loss is None:
                v = loss.detach().float().reshape(()) if isinstance(loss, torch.Tensor) else float(loss)
                self._val_sum = v if self._val_sum is None else self._val_sum + v
                self._val_n += 1
            return
        # after optimizer.step() the step is closed: the loss belongs to the step just finished
        target = self._cur
        if target is None or target.forwards == 0 and target.grad_norms is None:
            target = self._pending[-1] if self._pending else self._current()
        if loss is not None and not target.auto_loss and loss is not self._last_loss:
            target.losses.append(loss.detach().reshape(()) if isinstance(loss, torch.Tensor) else float(loss))
        if targets is not None and isinstance(targets, torch.Tensor) and target.t_stats is None and target.sampled:
            self._target_stats(target, targets)

    def _last_step(self) -> int:
        return max(0, self._step - 1)

    def _emit_val(self) -> None:
        self._val_pending.append((self._last_step(), self._val_sum / self._val_n))
        self._val_sum, self._val_n = None, 0

    # -- flush: the one host read -------------------------------------------------------
    def flush(self) -> None:
        if self._val_n:
            self._emit_val()
        steps, self._pending = self._pending, []
        vals, self._val_pending = self._val_pending, []
        if not steps and not vals:
            return
        # Every single-number statistic of every pending step goes into one torch.stack, the
        # vectors into one torch.cat: a flush costs a handful of ops, not one per step and field.
        scalars: list[torch.Tensor] = []
        vectors: list[torch.Tensor] = []
        s_slots: list[tuple[int, str, int, int]] = []  # (step index, field, start, length)
        v_slots: list[tuple[int, str, int, int]] = []
        v_offset = 0

        def put(i: int, name: str, t) -> None:
            nonlocal v_offset
            if isinstance(t, (list, tuple)):
                if t and all(isinstance(x, torch.Tensor) and x.dim() == 0 for x in t):
                    s_slots.append((i, name, len(scalars), len(t)))
                    scalars.extend(t)
                    return
                if not t:
                    return
                t = torch.stack([x.reshape(()) for x in t])
            if isinstance(t, torch.Tensor):
                if t.numel() == 1:
                    s_slots.append((i, name, len(scalars), 1))
                    scalars.append(t if t.dim() == 0 else t.reshape(()))
                else:
                    t = t.reshape(-1)
                    v_slots.append((i, name, v_offset, t.numel()))
                    vectors.append(t)
                    v_offset += t.numel()

        for i, s in enumerate(steps):
            if len(s.losses) == 1 and isinstance(s.losses[0], torch.Tensor):
                put(i, "loss", s.losses[0])
            elif s.losses and all(isinstance(l, torch.Tensor) for l in s.losses):  # accumulation: mean
                put(i, "loss", torch.stack([l.reshape(()).float() for l in s.losses]).mean())
            put(i, "grad_norms", s.grad_norms)
            put(i, "x_sum", s.x_sum)
            put(i, "x_stats", s.x_stats)
            put(i, "out_max", s.out_max)
            put(i, "out_stats", s.out_stats)
            put(i, "t_stats", s.t_stats)
            put(i, "upd", s.upd)
            put(i, "pnorm", s.pnorm)
            put(i, "lr", s.lr)
            for j, t in s.acts.items():
                put(i, f"act{j}", t)
        for k, (_, v) in enumerate(vals):
            put(-1 - k, "val", v)
        if self.dist is not None:  # torch_dist.py: its device scalars ride in this flush's one copy
            put(-1 - len(vals), "dist", self._safe("distributed", self.dist.take_tensors))
        host = np.zeros(0)
        n_s = len(scalars)
        slots = s_slots + [(i, n, n_s + a, l) for i, n, a, l in v_slots]
        if scalars or vectors:
            dev = (scalars or vectors)[0].device
            parts = ([torch.stack([t.to(dev, torch.float32) for t in scalars])] if scalars else []) + \
                [t.to(dev, torch.float32) for t in vectors]
            flat = parts[0] if len(parts) == 1 else torch.cat(parts)
            host = flat.cpu().numpy()  # the single device->host copy of this flush
            self.n_host_reads += 1
        got: dict[tuple[int, str], np.ndarray] = {(i, n): host[a:a + l] for i, n, a, l in slots}
        val_points = [(st, float(got[(-1 - k, "val")][0]) if (-1 - k, "val") in got else float(v))
                      for k, (st, v) in enumerate(vals)]
        facts = self.facts.facts
        if self.dist is None:  # decoded on the probe's worker
            flush = Flush(records=lambda: self._decode_all(steps, got), val_points=val_points, facts=facts)
        else:  # torch_dist.py: cross-rank merge (one gather per flush), noise scale rows; collectives
            records, extra_rows = self._decode_all(steps, got), []  # stay on the training thread
            got_dist = self._safe("distributed", self.dist.on_flush, records, got.get((-1 - len(vals), "dist")))
            if got_dist is not None:
                records, extra_rows = got_dist
            flush = Flush(records=records, val_points=val_points, extra_rows=extra_rows, facts=facts)
        if self.channel is not None:
            self.channel.ingest(flush)

    def _decode_all(self, steps, got) -> list[StepRecord]:
        """Host side of a flush (numpy only): StepRecords from the host copy."""
        records = []
        for i, s in enumerate(steps):
            records.append(self._decode(i, s, got))
            if i % 4 == 3:
                time.sleep(0)  # on the worker: let the training thread take the interpreter
        return records

    def _decode(self, i: int, s: _Step, got) -> StepRecord:
        rec = StepRecord.empty(s.step, self.layout)
        n_p = len(self.params)
        if (i, "loss") in got:
            rec.loss, rec.loss_seen = float(got[(i, "loss")][0]), 1.0
        elif s.losses:  # python floats from observe()
            rec.loss, rec.loss_seen = float(np.mean([float(l) for l in s.losses])), 1.0
        if (i, "grad_norms") in got:
            g = got[(i, "grad_norms")]
            if s.grad_scale is not None:
                g = g * s.grad_scale
            rec.param_grad_norms = np.full(n_p, np.nan)
            rec.param_grad_norms[s.grad_idx] = g
            rec.grad_norm = float(np.sqrt(np.sum(g.astype(np.float64) ** 2)))
        if s.missing is not None:
            rec.param_grad_missing = s.missing
        if (i, "x_sum") in got:
            rec.input_nonfinite = 0.0 if np.isfinite(got[(i, "x_sum")][0]) else 1.0
        if (i, "x_stats") in got:
            rec.input_abs_max, rec.input_mean, rec.input_std = map(float, got[(i, "x_stats")])
        if (i, "out_max") in got:
            rec.logit_abs_max = float(got[(i, "out_max")][0])
        if (i, "out_stats") in got:
            rec.logit_std, rec.softmax_saturation, rec.prob_rows, rec.output_nonfinite = map(float, got[(i, "out_stats")])
        if (i, "t_stats") in got:
            rec.target_min, rec.target_max, rec.target_distinct, rec.target_is_index = map(float, got[(i, "t_stats")])
            rec.batch_size = s.batch
        if (i, "upd") in got:
            rec.update_ratios = np.full(n_p, np.nan)
            rec.update_ratios[self.weight_idx or list(range(n_p))] = got[(i, "upd")]
        if (i, "pnorm") in got:
            rec.param_norms = got[(i, "pnorm")].astype(float)
        rec.lr = float(got[(i, "lr")][0]) if (i, "lr") in got else float(s.lr)
        for j in s.acts:
            if (i, f"act{j}") in got:
                rec.act_dead[j], rec.act_sat[j], rec.act_scale[j] = got[(i, f"act{j}")]
        rec.bn_eval_in_train = s.bn_eval
        return rec
