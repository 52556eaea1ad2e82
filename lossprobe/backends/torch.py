"""PyTorch backend: process-wide hooks and step boundaries; the statistics live in
:mod:`lossprobe.capture`.

Nothing is stored on the user's model or optimizer, so ``copy.deepcopy(model)``,
``pickle``/``torch.save(model)`` and ``state_dict`` behave as without the probe. The hooks
are shared by every attached torch probe (:class:`_Hooks`) and dispatch by identity:

* global module forward pre-hook, on the probed model: a training-mode forward opens a step;
* global module forward hook: the model's inputs and output, its watched activations
  (ReLU, sigmoid, tanh, softmax, BatchNorm; every ``activation_every`` steps), and
  ``nn.Module`` losses (``nn.CrossEntropyLoss()``...) with their targets; losses under
  ``no_grad()``/``eval()`` are validation losses;
* ``torch.autograd.backward`` (which ``loss.backward()`` calls): a loss that reaches
  ``backward()`` through this model's output is its loss however it was computed
  (functional, ``reduction="none"`` averaged by hand, an expression of the output), unless
  a module loss or ``observe()`` already gave it; and, on sampled steps, the gradient
  already sitting in ``.grad`` before each backward (``grad_carried``: the smallest);
* global optimizer step hooks: gradient norms (``torch._foreach_norm``) and the step
  boundary (a pending ``TrainingHealthError`` is raised here); with a closure
  (LBFGS, Lightning) the gradients are read again when it returns.

A gradient the backend cannot read (sparse, a traced value) is *unmeasured*, said once in
the log, never taken for a non-finite one. FSDP2's sharded parameters and gradients
(``DTensor``) are read through their local shards (:func:`_local_shard`); the ranks combine
the pieces at flush time (:mod:`lossprobe.backends.torch_dist`). Every ``flush_every``
steps all pending device values are read to the host in one copy (``n_host_reads``).
"""
from __future__ import annotations

import collections
import math
import sys
import weakref
from typing import Any

import numpy as np
import torch
from torch import nn
import torch.optim.optimizer as _optim_mod
from torch.amp.grad_scaler import GradScaler

from .base import claim
from ..capture.eager import EagerCapture, Step
from ..capture.facts import FactSheet, broadcast_note, output_activation
from ..capture.ops import first_tensor, ops_for
from ..record import Flush, Layout

_ACTIVATION_KINDS: list[tuple[type, str]] = [
    (nn.ReLU, "relu"), (nn.ReLU6, "relu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"),
    (nn.Softmax, "softmax"), (nn.modules.batchnorm._BatchNorm, "batchnorm"),
]
_LOSS_KINDS: list[tuple[type, str]] = [
    (nn.CrossEntropyLoss, "cross_entropy"), (nn.NLLLoss, "nll"), (nn.BCEWithLogitsLoss, "bce_logits"),
    (nn.BCELoss, "bce"), (nn.MSELoss, "mse"), (nn.L1Loss, "mse"), (nn.SmoothL1Loss, "mse"), (nn.HuberLoss, "mse"),
]
_FROM_LOGITS = {"cross_entropy": True, "bce_logits": True, "nll": False, "bce": False}
# The graph walk that looks for unregistered tensors stops after this many autograd nodes.
FOREIGN_WALK_NODES = 20_000
LOSS_INPUT_NODES = 16   # autograd nodes walked back (nearest first) from a loss's input to this model's output
UNWATCHED_WALK_NODES = 64   # the same from a backward's start, on a step whose output carries no hook


def _tensors_in(obj, depth: int = 0) -> list:
    """The tensors in a forward's arguments (lists, tuples and dicts, a few levels deep)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 3:
        return []
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [t for x in items for t in _tensors_in(x, depth + 1)]


def _node_key(node) -> tuple | None:
    """An autograd node's identity that outlives the tensors it made (a node cannot be
    weak-referenced, and holding it would keep its graph): its address and its sequence
    number, which autograd never hands out twice in a thread."""
    seq = getattr(node, "_sequence_nr", None)
    return (id(node), seq()) if seq is not None else None


_ATTACHED: "weakref.WeakKeyDictionary[nn.Module, Any]" = weakref.WeakKeyDictionary()


def _kind_of(module: nn.Module, table) -> str | None:
    for cls, kind in table:
        if isinstance(module, cls):
            return kind
    return None


def _readable(t: torch.Tensor) -> bool:
    """A plain dense tensor: not sparse, not a DTensor or other subclass, not a traced value."""
    return type(t) in (torch.Tensor, nn.Parameter) and t.layout == torch.strided


def _all_dense(grads: list) -> bool:
    """Is every one of ``grads`` a plain dense tensor (none missing, sparse or a subclass)?"""
    for g in grads:
        if type(g) is not torch.Tensor or g.layout is not torch.strided:
            return False
    return bool(grads)


def _local_shard(t):
    """This process's piece of a ``DTensor`` sharded or replicated over its mesh (FSDP2's
    parameters and gradients), read without an autograd node; any other tensor as it is (a
    DTensor with a pending reduction stays one: unreadable)."""
    dt = sys.modules.get("torch.distributed.tensor")
    if dt is None or not isinstance(t, dt.DTensor) or any(p.is_partial() for p in t.placements):
        return t
    with torch.no_grad():
        return t.to_local()


def _remember_unscaled(scale):
    """``GradScaler.scale(loss)`` while probes are attached: the scaled loss that reaches
    backward() keeps a reference to the loss itself, which is what is recorded."""
    def probed_scale(self, outputs):
        scaled = scale(self, outputs)
        if isinstance(outputs, torch.Tensor) and isinstance(scaled, torch.Tensor):
            scaled._lossprobe_unscaled = outputs
        return scaled
    return probed_scale


class _Hooks:
    """The process-wide hooks every attached torch probe shares; installed with the first
    probe, removed with the last. By module identity: ``roots`` (the probed models) and
    ``roles``: "act" (a watched activation, with its index), "module" (any module of a
    probed net)."""

    def __init__(self):
        self.backends: list[TorchBackend] = []
        self.roots: dict[int, list[TorchBackend]] = {}   # id(model) -> its probes
        self.roles: dict[int, list[tuple[TorchBackend, str, Any]]] = {}
        self.handles: list[Any] = []
        self.original_backward = None
        self.installed_backward = None
        self.original_scale = None
        self.installed_scale = None

    def add(self, b: "TorchBackend") -> None:
        if not self.backends:
            M = nn.modules.module
            self.handles = [M.register_module_forward_pre_hook(self.pre),
                            M.register_module_forward_hook(self.post, with_kwargs=True),
                            _optim_mod.register_optimizer_step_pre_hook(self.opt_pre),
                            _optim_mod.register_optimizer_step_post_hook(self.opt_post)]
            self.original_backward = torch.autograd.backward
            self.installed_backward = torch.autograd.backward = self.backward
            self.original_scale = GradScaler.scale
            self.installed_scale = GradScaler.scale = _remember_unscaled(GradScaler.scale)
        self.backends.append(b)
        self.roots.setdefault(id(b.model), []).append(b)
        for j, m in enumerate(b.act_modules):
            self.roles.setdefault(id(m), []).append((b, "act", j))
        for name, m in b.net.named_modules():
            if name:
                self.roles.setdefault(id(m), []).append((b, "module", name))

    def remove(self, b: "TorchBackend") -> None:
        if b not in self.backends:
            return
        self.backends.remove(b)
        for table, mine in ((self.roots, lambda r: r is b), (self.roles, lambda r: r[0] is b)):
            for key in list(table):
                table[key] = [r for r in table[key] if not mine(r)]
                if not table[key]:
                    del table[key]
        if not self.backends:
            for h in self.handles:
                h.remove()
            self.handles = []
            if torch.autograd.backward is self.installed_backward:   # unless someone wrapped it since
                torch.autograd.backward = self.original_backward
            if GradScaler.scale is self.installed_scale:
                GradScaler.scale = self.original_scale

    # -- dispatch --
    # These run on every module call in the process: the cheap tests come first, and
    # is_compiling() (nothing of the probe inside a compiled graph) only before real work.
    def pre(self, module, args):
        roots = self.roots.get(id(module))
        if roots is not None and not torch.compiler.is_compiling():
            for b in roots:
                b._guarded("steps", b._root_pre)
        return None

    def post(self, module, args, kwargs, output):
        roots = self.roots.get(id(module))
        if roots is not None and not torch.compiler.is_compiling():
            for b in roots:
                b._guarded("outputs", b._root_post, args, kwargs, output)
        for b, role, arg in self.roles.get(id(module), ()):
            if b._cur is None or not b._cur.sampled:
                continue   # activations and producers are read on sampled steps only
            elif torch.compiler.is_compiling():
                return None
            elif role == "act":
                b._guarded("activations", b._act_post, arg, output)
            elif isinstance(output, torch.Tensor):
                b._guarded("outputs", b._note_producer, output, arg)   # which layer made the model's output
        if isinstance(module, nn.modules.loss._Loss) and not torch.compiler.is_compiling():
            for b in self.backends:
                b._guarded("loss", b._loss_module, module, args, output)
        return None

    def opt_pre(self, opt, args, kwargs):
        changed = None
        for b in list(self.backends):
            new = b._guarded("steps", b._opt_pre, opt, args, kwargs)
            if new is not None:   # a closure wrapped to read the gradients when it returns
                changed = args, kwargs = new
        return changed

    def opt_post(self, opt, args, kwargs):
        for b in list(self.backends):
            b._guarded("steps", b._opt_post, opt)
        return None

    def backward(self, tensors, *args, **kwargs):
        live = list(self.backends)
        for b in live:
            b._guarded("backward", b._before_backward)
        out = self.original_backward(tensors, *args, **kwargs)
        for b in live:
            b._guarded("backward", b._after_backward, tensors)
        return out


_HOOKS = _Hooks()


class TorchBackend(EagerCapture):
    framework = "torch"
    OUTPUT_HOOK_OPTIONAL = True
    _grad_readable = staticmethod(_readable)
    _local = staticmethod(_local_shard)

    @staticmethod
    def _node_inputs(node) -> list:
        return [n for n, _ in node.next_functions]

    def __init__(self, model: nn.Module, optimizer=None, config=None):
        claim(_ATTACHED, model)
        self.ops = ops_for("torch")
        self.model = model
        self._disabled: set[str] = set()
        net = model
        # torch.compile(model): hooks inside the compiled graph would make dynamo guard on the
        # probe's per-step state (a recompile every step), so only the wrapper's own forward,
        # the losses, backward and the optimizer are watched
        self.compiled = type(net).__name__ == "OptimizedModule" and isinstance(getattr(net, "_orig_mod", None), nn.Module)
        if self.compiled:
            net = net._orig_mod
        inner = getattr(net, "module", None)  # DataParallel / DDP wrappers
        self.net = inner if isinstance(inner, nn.Module) else net
        self.cfg = config
        self.optimizer = None
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        self._param_ids = {id(p): i for i, p in enumerate(params)}
        # embedding tables are lookups, not layers: their gradient reaches only the rows a batch
        # used, so their per-element gradient/update scale says nothing about gradient flow
        emb = {id(m.weight) for m in self.net.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
        weight_idx = [i for i, p in enumerate(params) if p.ndim >= 2 and id(p) not in emb]
        acts = [(n, m, _kind_of(m, _ACTIVATION_KINDS)) for n, m in self.net.named_modules()]
        acts = [(n or "root", m, k) for n, m, k in acts if k and not self.compiled]
        self.act_modules = [m for _, m, _ in acts]
        self._bn_modules = [m for _, m, k in acts if k == "batchnorm"]
        from . import torch_dist  # rank, world size and the rank table are known before the layout
        self.params = params
        self._sharded = any(_local_shard(p) is not p for p in params)
        self.dist = self._safe("distributed", torch_dist.DistHelper.create, self)
        layout = Layout(
            framework="torch", params=[n for n, _ in named], param_sizes=[p.numel() for p in params],
            activations=[n for n, _, _ in acts], kinds=[k for _, _, k in acts],
            is_weight=[i in set(weight_idx) for i in range(len(params))],
            activation_types=[type(m).__name__ for _, m, _ in acts],
            param_owner_types=[type(self.net.get_submodule(n.rpartition(".")[0])).__name__ for n, _ in named],
            rank=torch_dist.publisher_rank(), world_size=torch_dist.rank_world()[1],
            extra=self.dist.layout_extra() if self.dist is not None else {})
        facts = FactSheet(dropout_rates=tuple((n, float(m.p)) for n, m in self.net.named_modules()
                                              if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0))
        # parameters a device op can read (FSDP2's DTensors: through their local shards)
        super()._init_capture(layout, config, params, weight_idx, facts,
                              readable=[i for i, p in enumerate(params) if _readable(_local_shard(p))])
        # loss modules looked at (their shapes) and their facts: id -> (weakref, ...) (_known)
        self._shapes_checked: dict[int, tuple] = {}
        self._loss_facts: dict[int, tuple] = {}
        self._in_forward = False              # between the model's forward pre-hook and its forward hook
        self._foreign: list | None = None     # weakrefs: trainable tensors the forward uses that are not params
        self._last_out = None                 # weakref to the model's latest output (tells our loss from another model's)
        self._last_node: tuple | None = None  # _node_key of that output's autograd node (outlives the tensor)
        if optimizer is not None:
            self._bind_optimizer(optimizer)

    # -- lifecycle ----------------------------------------------------------
    def start(self, channel) -> None:
        self.channel = channel
        _ATTACHED[self.model] = self
        _HOOKS.add(self)
        if self.dist is not None:  # torch_dist.py: per-rank summaries, noise scale
            self._safe("distributed", self.dist.start)

    def detach(self) -> None:
        _HOOKS.remove(self)
        if self.dist is not None:
            self.dist.detach()
        _ATTACHED.pop(self.model, None)

    def finish(self) -> None:
        """At detach: without an optimizer (steps end at the next forward), the last step that
        ran forward still counts; with one, a forward no optimizer.step() followed is not a
        step (a GAN's discriminator run for the generator's loss)."""
        cur = self._cur
        if cur is not None and cur.tentative and cur.grads is None:
            self._demote(cur)
        elif cur is not None and cur.forwards > 0 and self.optimizer is None:
            if cur.grads is None:
                self._safe("gradients", self._read_grads, cur)
            self._close_step()

    def _guarded(self, part: str, fn, *args):
        """A hook body: never raises into training (``_safe``), but a TrainingHealthError."""
        if self.channel is None:
            return None
        return self._safe(part, fn, *args)

    def _bind_optimizer(self, opt) -> None:
        self.optimizer = opt
        ids = {id(p) for g in opt.param_groups for p in g["params"]}
        self.facts.learn(in_optimizer=tuple(id(p) in ids for p in self.params))
        self._note_unregistered()

    def _ours(self, opt) -> bool:
        """Is ``opt`` this model's optimizer (bound now if it holds our parameters)?"""
        if self.optimizer is None and any(id(p) in self._param_ids for g in opt.param_groups for p in g["params"]):
            self._bind_optimizer(opt)
        return opt is self.optimizer

    def _training(self) -> bool:
        """Could this forward/loss be a training step? Grad enabled, and the model in train
        mode - or in eval mode with an optimizer bound: a loop that forgot model.train() after
        validation still trains (tentatively, until optimizer.step() confirms it)."""
        return torch.is_grad_enabled() and (self.model.training or self.optimizer is not None)

    def _demote(self, cur: Step) -> None:
        """An eval-mode forward that no optimizer.step() followed was validation after all."""
        for loss in cur.losses:
            self._add_val(loss)
        if self._cur is cur:
            self._cur = None

    # -- forward ---------------------------------------------------------------------
    def _root_pre(self) -> None:
        self._in_forward = True   # a loss module called before _root_post runs inside the model (HF)
        self.channel.boundary(raise_pending=False)  # queued sink updates that must run on this thread
        if not self._training():
            return
        tentative = not self.model.training
        prev = self._cur
        if prev is not None and prev.tentative and prev.forwards > 0 and prev.grads is None:
            self._demote(prev)
        cur = self._cur
        if self.optimizer is None and cur is not None and cur.forwards > 0 and cur.grads is None:
            # forward-boundary mode (no optimizer seen yet): a new training forward ends the step
            self._safe("gradients", self._read_grads, cur)
            self._close_step()
        if self._val_n and not tentative:
            self._emit_val()
        cur = self._current()
        if cur.forwards == 0:
            cur.tentative = tentative
        cur.forwards += 1
        if cur.sampled:
            self._record_bn_eval(cur, self._bn_modules)
        self._act_out.clear()

    def _root_post(self, args, kwargs, output) -> None:
        self._in_forward = False
        out = output if type(output) is torch.Tensor else first_tensor(self.ops, output)
        self._last_out = weakref.ref(out) if out is not None else None
        self._last_node = _node_key(getattr(out, "grad_fn", None))
        cur = self._cur
        if not self._training() or cur is None:
            return
        if cur.forwards == 1 and self.cfg.capture_inputs:
            self._safe("inputs", self._record_inputs, cur, (args, kwargs))
        if self.dist is not None:
            self._safe("distributed", self.dist.on_forward, args, kwargs)
        if self._foreign is None and out is not None and out.grad_fn is not None:
            self._safe("facts", self._find_foreign, args, kwargs, out)
        self._model_output(cur, output, out)

    def _find_foreign(self, args, kwargs, out) -> None:
        """Once, on the first training forward: the leaf tensors that need a gradient and that
        the forward reaches (walking the output's graph back to the model's inputs) but that
        are not the model's parameters -- layers kept in a plain list or dict, tensors made with
        ``requires_grad=True`` in ``__init__``. ``model.parameters()`` misses them, and so does
        an optimizer built from it (told in :meth:`_note_unregistered`)."""
        self._foreign = []
        if self.compiled or self._sharded:
            return  # compiled graphs and sharded parameters are not walked
        inputs = [t for t in _tensors_in((args, kwargs))]
        stop = {id(t.grad_fn) for t in inputs if t.grad_fn is not None}
        own = set(self._param_ids) | {id(t) for t in inputs}
        seen, todo, found = set(), [out.grad_fn], {}
        while todo and len(seen) < FOREIGN_WALK_NODES:
            node = todo.pop()
            if node is None or id(node) in seen or id(node) in stop:
                continue
            seen.add(id(node))
            var = getattr(node, "variable", None)
            if var is not None:   # AccumulateGrad: a leaf that gets a gradient
                if id(var) not in own:
                    found[id(var)] = var
                continue
            todo.extend(n for n, _ in node.next_functions)
        self._foreign = [weakref.ref(v) for v in found.values()]
        self._note_unregistered()

    def _note_unregistered(self) -> None:
        """Foreign tensors that the bound optimizer does not hold: never trained."""
        if not self._foreign or self.optimizer is None:
            return
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        left = [v for v in (r() for r in self._foreign) if v is not None and id(v) not in held]
        self.facts.learn(unregistered=tuple(str(tuple(v.shape)) for v in left[:20]))

    def _act_post(self, j: int, output) -> None:
        cur = self._cur
        if cur is None or not cur.sampled or not self._training():
            return
        self._record_activation(cur, j, output)

    # -- losses ----------------------------------------------------------------------
    def _loss_module(self, module, args, output) -> None:
        training = self._training()
        if training and len(args) >= 2 and not self._known(self._shapes_checked, module):
            self._safe("facts", self._check_broadcast, module, args)
        if not isinstance(output, torch.Tensor) or output.numel() != 1:
            return
        if not self._is_our_loss(args[0] if args else None):
            return  # several probed models in one process (GAN, teacher-student): not this one's loss
        if not training:
            self._add_val(output)   # validation: accumulated on the device, emitted at the next training step
            self.validation_losses_seen += 1
            return
        cur = self._current()
        facts = None
        if cur.sampled or not self._known(self._loss_facts, module):   # looked at again on sampled steps only
            facts = self._facts_of_loss(module, args)
            self._remember(self._loss_facts, module, facts)
        self._loss_output(cur, output, facts, args[1] if len(args) >= 2 else None)

    def _facts_of_loss(self, module, args) -> dict:
        """What a loss module tells: its kind, whether it takes logits, the activation in front
        of it and (for a class-index loss) the number of classes."""
        kind = _kind_of(module, _LOSS_KINDS) or ""
        facts = {"loss_kind": kind, "loss_name": type(module).__name__, "loss_from_logits": _FROM_LOGITS.get(kind)}
        received = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if received is not None:
            facts["loss_input_activation"] = output_activation(received.grad_fn, self._node_inputs)
            if kind in ("cross_entropy", "nll") and received.dim() >= 2:
                facts["n_classes"] = int(received.shape[1])   # torch's class dimension: (N, C, ...)
        return facts

    def _check_broadcast(self, module, args) -> None:
        """An element-wise loss whose input and target broadcast (:func:`broadcast_note`): looked
        at once per loss module, on its first call with this model's output."""
        x, y = args[0], args[1]
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and self._is_our_output(x):
            self._remember(self._shapes_checked, module)
            note = broadcast_note(_kind_of(module, _LOSS_KINDS) or "", x.shape, y.shape)
            if note:
                self.facts.learn(loss_broadcast=note)

    def _is_our_loss(self, received) -> bool:
        """Is a loss module's input this model's: computed inside its forward (a loss the model
        returns), its last output or a view of it, or computed from that output within
        LOSS_INPUT_NODES autograd nodes (``log_softmax(out)``)? An input with an autograd graph
        that does not reach the output belongs to another model (an EMA copy, a teacher, a
        second network); one without a graph (validation under no_grad), or met before this
        model's forward ever ran, is this model's when it is the only probed one."""
        if self._in_forward or self._is_our_output(received):
            return True
        node, target = getattr(received, "grad_fn", None), self._last_node
        if node is None or target is None:   # nothing to follow, or the model is used through
            return len(_ATTACHED) == 1       # its methods (model.encode()), never its forward
        return self._reaches_output(node, LOSS_INPUT_NODES)

    def _reaches_output(self, node, limit: int) -> bool:
        """Does autograd node ``node`` lead to this model's last output within ``limit``
        nodes (walked nearest first)?"""
        target = self._last_node
        seen, todo = set(), collections.deque([node])
        while todo and target is not None and len(seen) < limit:
            n = todo.popleft()
            if n is None or id(n) in seen:
                continue
            if id(n) == target[0] and _node_key(n) == target:
                return True
            seen.add(id(n))
            todo.extend(m for m, _ in n.next_functions)
        return False

    def _reached_unwatched(self, loss) -> bool:
        """A backward from another tensor than the module loss (the loop changed its pattern:
        a scaled or summed loss, a functional one): the graph near its start says whether it
        reached the output. The walk is short (UNWATCHED_WALK_NODES): it also runs for other
        models' backward passes while this model's step is open."""
        if super()._reached_unwatched(loss):
            return True
        node = getattr(loss, "grad_fn", None)
        return node is not None and self._reaches_output(node, UNWATCHED_WALK_NODES)

    def _is_our_output(self, t) -> bool:
        """Is ``t`` this model's last output, or a view of it (``out.view(-1)``, ``out[:, 0]``)?"""
        ref = self._last_out() if self._last_out is not None else None
        return isinstance(t, torch.Tensor) and ref is not None and (t is ref or t._base is ref)

    # -- backward --------------------------------------------------------------------
    def _before_backward(self) -> None:
        self._reached = False

    def _backward_done(self, cur: Step) -> None:
        if self.dist is not None:
            self.dist.on_backward()

    # -- optimizer: the step boundary -------------------------------------------------
    def _opt_pre(self, opt, args, kwargs):
        """optimizer.step(): the step's gradients are read now, or -- when it is given a closure
        that runs forward and backward (LBFGS, Lightning) -- again when the closure returns."""
        if not self._ours(opt):
            return None
        self.channel.boundary()  # raises TrainingHealthError when on_critical="raise"
        if self._val_n:
            self._emit_val()
        cur = self._current()
        cur.tentative = False  # an optimizer step: this was training, whatever the module mode
        self._safe("gradients", self._read_grads, cur)
        lr = opt.param_groups[0].get("lr", math.nan)
        self._record_lr(cur, lr.detach() if isinstance(lr, torch.Tensor) else lr)
        if cur.sampled:
            self._safe("updates", self._snapshot, cur)
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

    def _opt_post(self, opt) -> None:
        if opt is not self.optimizer or self._cur is None:
            return
        if self._cur.sampled:
            self._safe("updates", self._record_updates, self._cur)
        self._close_step()

    # -- gradients -------------------------------------------------------------------
    GRAD_BLOCKS = 16  # contiguous runs per sampled gradient tensor

    def _read_grads(self, cur: Step) -> None:
        """Per-parameter gradient norms in one ``_foreach_norm`` call, exact by default.

        With ``Config.grad_sample`` = N > 0, between sampled steps a tensor larger than N
        elements is read through ``GRAD_BLOCKS`` contiguous runs spread over it and its norm
        scaled by sqrt(n / n_read). The default reads every gradient: the optimizer reads them
        right after, so the pass mostly warms its cache, where the strided runs cost more than
        they save (benchmarks/overhead.py)."""
        found = [p.grad for p in self.params]
        budget = self.cfg.grad_sample
        if (cur.sampled or budget <= 0) and _all_dense(found):
            # the usual case, every parameter with a plain dense gradient: one call, no sorting
            cur.grads = (None, self.ops.norms(found), None, None)
            return
        if self._sharded:   # FSDP2: this rank's shard of each gradient
            found = [_local_shard(g) for g in found]
        grads, idx, missing, unmeasured = self._sort_grads(found, _readable)
        if cur.sampled or budget <= 0 or not grads:
            self._record_grads(cur, grads, idx, missing, unmeasured)
            return
        views, scale = [], None
        blocks = max(1, min(self.GRAD_BLOCKS, budget))
        width = max(1, budget // blocks)
        for k, g in enumerate(grads):
            n = g.numel()
            if n > budget and g.is_contiguous():
                # `blocks` contiguous runs of `width` elements spread evenly over the tensor:
                # a few cache lines each, where a strided sample touches a line per element
                views.append(g.as_strided((blocks, width), (n // blocks, 1), g.storage_offset()))
                if scale is None:
                    scale = np.ones(len(grads))
                scale[k] = math.sqrt(n / (blocks * width))
            else:
                views.append(g)
        self._record_grads(cur, grads, idx, missing, unmeasured, norms=self.ops.norms(views), scale=scale)

    # -- flush ------------------------------------------------------------------------
    def _extra_tensors(self) -> list:
        if self.dist is None:
            return []
        t = self._safe("distributed", self.dist.take_tensors)  # rides in this flush's one copy
        return [t] if t is not None else []

    def _hand_over(self, steps, host, plan, val_points, extra_host) -> None:
        if self.dist is None:
            return super()._hand_over(steps, host, plan, val_points, extra_host)
        # torch_dist.py: the cross-rank merge (one gather per flush) and the noise-scale rows
        taken, dist_host = self.dist.take_taken(), (extra_host[-1] if extra_host else None)

        def decode(pause=None):
            records = self._decode(steps, host, plan, pause)
            merged = self._safe("distributed", self.dist.on_flush, records, dist_host, taken)
            return merged if merged is not None else (records, [])
        if self.dist.table is not None:   # several ranks: the collectives stay on the training thread
            records, extra_rows = decode()
            self.channel.ingest(Flush(records=records, val_points=val_points, extra_rows=extra_rows,
                                      facts=self.facts.facts))
        else:
            self.channel.ingest(Flush(decode=decode, val_points=val_points, facts=self.facts.facts))

