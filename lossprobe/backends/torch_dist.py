"""Data-parallel training and the gradient noise scale for the PyTorch backend.

The torch backend creates a :class:`DistHelper` (:meth:`DistHelper.create`) before its layout
(the rank table and the noise scale ride in ``Layout.extra``), starts it with its hooks and,
once per flush, calls
:meth:`DistHelper.take_tensors` (this module's device scalars join the backend's single
device->host copy) and :meth:`DistHelper.on_flush` (cross-rank merge, noise-scale rows);
everything distributed lives here.

Under ``torch.distributed`` (DDP, ``torchrun``), attach on every rank, after
``init_process_group``, to the DDP-wrapped model or to its inner module::

    dist.init_process_group("nccl")                 # or "gloo" on CPU
    model = DDP(net.to(rank), device_ids=[rank])
    probe = lossprobe.attach(model, optimizer=opt, sinks=["console", "mlflow"])
    ...train as usual...
    probe.detach()                                  # on every rank, before destroy_process_group()

What happens:

* **rank detection** reads ``torch.distributed`` only if the user already initialised
  it (it is never initialised here); before that, the global ``RANK`` from the environment
  decides the sinks (``torchrun`` sets it), never ``LOCAL_RANK`` alone (:func:`publisher_rank`).
* **one publisher**: the layout carries this process's rank (:func:`publisher_rank`);
  the probe of a rank other than 0 keeps no sink (console included), so a tracker gets
  exactly one run. A sink with ``all_ranks = True`` is kept on every rank.
* **every rank is seen**: at each flush the ranks exchange a few numbers per step
  (local loss, non-finite flags for loss/inputs/outputs/local gradients, local squared
  gradient norm, local batch) with *one* ``all_gather_object`` -- at flush time only,
  never per step. Each rank's records then carry the cross-rank mean loss and the
  worst non-finite flags, so every rank's probe reaches the same verdicts (and a
  ``TrainingHealthError`` is raised on all ranks at the same step). The per-rank
  values go into a :class:`~lossprobe.rules.distributed.RankTable`: ``nan_loss`` and
  friends name the rank where the fault appeared, ``rank_divergence`` names a rank
  whose loss is far from the others'.
* **local gradients**: when the model handed to ``attach`` is a
  ``DistributedDataParallel`` without a communication hook of its own, a hook that
  does exactly what DDP's default all-reduce does is registered at the first training
  forward; before the reduction it adds up the squared norm of this rank's own
  gradient buckets (on the device), after it the squared norm of the reduced ones.
  If the user's code registers a comm hook later, DDP refuses a second one: set
  ``Config(extra={"ddp_comm_hook": False})`` then (the noise scale and local-gradient
  attribution are off, everything else works).

**FSDP2** (``fully_shard``; attach after sharding, to the sharded model): parameters and
gradients are ``DTensor`` pieces. Each rank measures its own pieces (the backend reads
their local shards) and, in the same one exchange per flush, sends its per-parameter
values for the sharded parameters (:func:`~lossprobe.capture.shards.shard_summary`); every
rank then combines them as :mod:`lossprobe.capture.spec` says, so per-layer gradient norms,
the global gradient norm, weight norms and update ratios are those of the whole tensors
(:func:`~lossprobe.capture.shards.merge_shards`). No collective runs per step. A tensor
replicated over part of the mesh (HSDP) counts each distinct piece once.

The gradient noise scale B_simple (McCandlish et al. 2018) needs the squared gradient
norm at two batch sizes: under DDP, the per-rank batch (before the all-reduce) and the
global batch (after it); on one device, the micro-batches of gradient accumulation
(measured on the steps that sample activations, every ``activation_every``) and their
sum. A step with one forward on one device has no second batch size: no estimate; nor
does a step whose forwards and backward passes do not alternate (two forwards, one
backward is not gradient accumulation).
It is published as ``lossprobe/noise_scale`` (samples) next to
``lossprobe/noise_scale_batch`` (the effective batch), and :func:`noise_scale_summary`
gives the batch-size advice.

Caveats: ``probe.flush()`` and ``probe.detach()`` must be called on every rank (a flush
is a collective); gradient clipping before ``optimizer.step()`` biases the one-device
estimate (its last micro-batch is read after clipping), not the DDP one.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import torch
import torch.optim.optimizer as _optim_mod

from ..capture.ranks import env_int, merge_ranks, rank_summaries
from ..capture.shards import merge_shards, shard_summary
from ..record import StepRecord
from ..rules.distributed import NoiseScale, RankTable


def rank_world() -> tuple[int, int]:
    """(rank, world size) from an already initialised ``torch.distributed``, else (0, 1)."""
    d = getattr(torch, "distributed", None)
    if d is not None and d.is_available() and d.is_initialized():
        return int(d.get_rank()), int(d.get_world_size())
    return 0, 1


# the node's index, set beside LOCAL_RANK by torchrun (GROUP_RANK) and Lightning/accelerate (NODE_RANK)
NODE_INDEX_VARS = ("GROUP_RANK", "NODE_RANK")


def _env_rank() -> int:
    """The global rank a launcher set (``RANK``: torchrun, DeepSpeed, accelerate; not Slurm's
    or MPI's task ranks, set for independent processes too). ``LOCAL_RANK`` alone is no
    global rank: a process is taken for rank 0 only when its local rank and its node's index
    (:data:`NODE_INDEX_VARS`, 0 when unset) are both 0 -- every launcher numbers a node's
    processes after those of the nodes before it. Such a process then stands in for rank 0
    (it publishes: on one machine the right one; on several nodes whose launcher sets neither
    ``RANK`` nor a node index, attach after ``init_process_group``). Any other process gets
    a stand-in rank above 0 (node index x ``LOCAL_WORLD_SIZE`` + local rank) and does not
    publish."""
    rank = env_int("RANK")
    if rank is not None:
        return max(0, rank)
    local = max(0, env_int("LOCAL_RANK") or 0)
    node = max([0] + [env_int(k) or 0 for k in NODE_INDEX_VARS])
    return node * max(1, env_int("LOCAL_WORLD_SIZE") or 1) + local


def publisher_rank() -> int:
    """This process's rank for publishing (only rank 0 publishes): torch.distributed's when
    initialised, else ``RANK`` from the environment (``torchrun`` sets it before
    ``init_process_group``), never ``LOCAL_RANK`` taken for a global rank (:func:`_env_rank`).

    Example::

        # RANK=2 LOCAL_RANK=0 (node 1 of two, 2 processes each), before init_process_group
        publisher_rank()      # 2: not a publisher
    """
    rank, world = rank_world()
    return rank if world > 1 else _env_rank()


def shard_layout(params, world: int) -> tuple[list[int], np.ndarray]:
    """(indices of the sharded parameters, how many ranks hold each piece of them): a
    ``DTensor`` sharded over some mesh dimensions and replicated over the others (FSDP2, HSDP)
    has world / (product of its sharded dimensions' sizes) copies of each piece."""
    dt = sys.modules.get("torch.distributed.tensor")
    if dt is None:
        return [], np.ones(0)
    idx, copies = [], []
    for i, p in enumerate(params):
        if isinstance(p, dt.DTensor) and not any(pl.is_partial() for pl in p.placements):
            pieces = math.prod(p.device_mesh.size(d) for d, pl in enumerate(p.placements) if pl.is_shard())
            idx.append(i)
            copies.append(max(1.0, world / pieces))
    return idx, np.array(copies, dtype=float)


def _is_ddp(model: Any) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _batch_of(args, kwargs) -> int:
    """First dimension of the first tensor argument: shape metadata, no device read."""
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor):
            return int(v.shape[0]) if v.ndim else 1
        if isinstance(v, (list, tuple)) and v and isinstance(v[0], torch.Tensor):
            return int(v[0].shape[0]) if v[0].ndim else 1
    return 0


class _StepStats:
    """What the helper measured on one optimizer step (device scalars until the flush)."""

    __slots__ = ("step", "local_sq", "global_sq", "samples", "micro_sq", "micro_n", "final_sq", "forwards",
                 "backwards", "broken")

    def __init__(self, step: int):
        self.step = step
        self.local_sq = self.global_sq = self.final_sq = None
        self.samples = 0
        self.forwards = 0
        self.backwards = 0      # backward passes that reached the watched parameter
        self.broken = False     # micro-batch boundaries did not line up with backward passes
        self.micro_sq: list[torch.Tensor] = []
        self.micro_n: list[int] = []


class _CommState:
    """State of the DDP comm hook: squared bucket norms before and after the all-reduce."""

    def __init__(self, process_group):
        self.process_group = process_group
        self.local: list[torch.Tensor] = []
        self.reduced: list[torch.Tensor] = []

    def __setstate__(self, state):  # DDP pickles hook state for some checkpoints
        self.__dict__.update(state)

    def __getstate__(self):
        return {"process_group": None, "local": [], "reduced": []}


def _allreduce_with_norms(state, bucket):  # no annotations: DDP checks them against real types
    """DDP's default all-reduce (divide by world size, sum), measuring squared norms on the way."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buf = bucket.buffer()
    state.local.append(buf.detach().float().pow(2).sum())  # before allreduce_hook divides in place
    fut = allreduce_hook(state.process_group, bucket)

    def measured(f):
        t = f.value()
        t = t[0] if isinstance(t, (list, tuple)) else t
        state.reduced.append(t.detach().float().pow(2).sum())
        return t

    return fut.then(measured)


class DistHelper:
    """Per-probe distributed state and noise-scale measurement (created by :func:`setup`)."""

    def __init__(self, backend, rank: int, world: int):
        self.backend = backend
        self.rank, self.world = rank, world
        cfg = backend.cfg
        extra = getattr(cfg, "extra", {}) or {}
        self.noise_on = bool(extra.get("noise_scale", True))
        self.comm_hook_wanted = bool(extra.get("ddp_comm_hook", True)) and world > 1 and _is_ddp(backend.model)
        # one device: the noise scale from the micro-batches of gradient accumulation
        self.micro = self.noise_on and world == 1
        self.comm: _CommState | None = None
        # the rank rules read the last curve_window steps: keep a little more, not the full window
        # (memory grows with the number of ranks)
        self.table = RankTable(world, window=max(2 * int(getattr(cfg, "curve_window", 60)), 128)) if world > 1 else None
        self.noise = NoiseScale(beta=float(extra.get("noise_scale_beta", 0.95)))
        self.noise.source = "ddp" if self.comm_hook_wanted else "micro-batches"
        # FSDP: the parameters whose pieces the ranks combine at flush (none on one rank)
        self.sharded, self.copies = shard_layout(backend.params, world) if world > 1 else ([], np.ones(0))
        self._handles: list[Any] = []
        self._cur = _StepStats(0)
        self._snap: list[torch.Tensor] | None = None   # grads at the previous micro-batch boundary
        self._snap_ids: tuple[int, ...] = ()
        self._pending: list[_StepStats] = []
        self._taken: tuple | None = None
        self.n_gathers = 0

    @classmethod
    def create(cls, backend) -> "DistHelper | None":
        """The helper for ``backend`` (None: one process and no noise scale wanted)."""
        rank, world = rank_world()
        extra = getattr(backend.cfg, "extra", {}) or {}
        if world == 1 and not extra.get("noise_scale", True):
            return None
        return cls(backend, rank, world)

    def layout_extra(self) -> dict[str, Any]:
        """What the rules read from ``Layout.extra``: the rank table and the noise scale."""
        ex: dict[str, Any] = {}
        if self.table is not None:
            ex["dist"] = self.table
            ex["rank"], ex["world_size"] = self.rank, self.world
        if self.noise_on:
            ex["noise_scale"] = self.noise
        return ex

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        self._handles.append(_optim_mod.register_optimizer_step_post_hook(self._on_opt_post))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._snap = None

    def _warn(self, what: str, exc: BaseException) -> None:
        self.backend._warn(f"dist:{what}", f"{what} failed ({type(exc).__name__}: {exc}); switched off, "
                           "training continues")

    # -- called by the backend -------------------------------------------------------
    def on_forward(self, args, kwargs) -> None:
        """A training forward of the model (the backend's root forward hook)."""
        try:
            n = _batch_of(args, kwargs)
            st = self._cur
            st.forwards += 1
            st.samples += n
            if self.comm_hook_wanted and self.comm is None:
                self._register_comm_hook()
            if self.micro:
                self._micro_boundary(st, n)
        except Exception as exc:
            self.noise_on = self.micro = False
            self._warn("noise-scale capture", exc)

    def on_backward(self) -> None:
        """A backward pass reached the model: a forward after it is a micro-batch boundary."""
        self._cur.backwards += 1

    def _register_comm_hook(self) -> None:
        model = self.backend.model
        self.comm_hook_wanted = False  # one attempt
        if getattr(model, "_comm_hooks", None):
            self._warn("comm hook", RuntimeError("this DDP model already has a communication hook; "
                                                 "local-gradient checks and the noise scale are off"))
            return
        state = _CommState(getattr(model, "process_group", None))
        model.register_comm_hook(state, _allreduce_with_norms)
        self.comm = state

    def _grads(self) -> tuple[list[torch.Tensor], tuple[int, ...]]:
        gs, ids = [], []
        for i, p in enumerate(self.backend.params):
            if p.grad is not None:
                gs.append(self.backend._local(p.grad).detach())
                ids.append(i)
        return gs, tuple(ids)

    def _micro_boundary(self, st: _StepStats, n: int) -> None:
        """At forward k >= 2 of a sampled step, the grads hold micro-batches 1..k-1: the
        newest one is their difference from the previous snapshot (zero at forward 1)."""
        cur = self.backend._cur
        if cur is None or not cur.sampled:
            return
        st.micro_n.append(n)
        if st.forwards < 2 or st.broken:
            return
        if st.backwards != st.forwards - 1:  # e.g. two forwards, one backward: not micro-batches
            st.broken = True
            return
        self._diff_into(st)

    def _diff_into(self, st: _StepStats) -> None:
        gs, ids = self._grads()
        if not gs:
            return
        if self._snap is None or self._snap_ids != ids:
            if st.micro_sq or self._snap is not None:  # the set of grads changed mid-step: give up on this step
                st.micro_sq.clear()
                st.micro_n.clear()
                self._snap = None
                return
            sq = torch.stack(torch._foreach_norm(gs)).float().pow(2).sum()
            self._snap = [g.clone() for g in gs]
            self._snap_ids = ids
        else:
            diff = torch._foreach_sub(gs, self._snap)
            sq = torch.stack(torch._foreach_norm(diff)).float().pow(2).sum()
            torch._foreach_copy_(self._snap, gs)
        st.micro_sq.append(sq)

    def _on_opt_post(self, opt, args, kwargs):
        b = self.backend
        if b.optimizer is not None and opt is not b.optimizer:
            return None
        if b.optimizer is None and not any(id(p) in b._param_ids for g in opt.param_groups for p in g["params"]):
            return None
        st, self._cur = self._cur, _StepStats(0)
        st.step = max(0, b._step - 1)  # the backend's own post hook has closed the step already
        try:
            if self.comm is not None:
                if self.comm.local:
                    st.local_sq = torch.stack(self.comm.local).sum()
                if self.comm.reduced:
                    st.global_sq = torch.stack(self.comm.reduced).sum()
                self.comm.local, self.comm.reduced = [], []
            elif self.micro and st.micro_sq and not st.broken and st.backwards == st.forwards:
                self._diff_into(st)  # the last micro-batch
                gs, _ = self._grads()
                if gs and len(st.micro_sq) == len(st.micro_n) >= 2:
                    st.final_sq = torch.stack(torch._foreach_norm(gs)).float().pow(2).sum()
        except Exception as exc:
            self.noise_on = self.micro = False
            self._warn("noise-scale capture", exc)
        self._snap = None
        self._pending.append(st)
        return None

    # -- flush ---------------------------------------------------------------------------
    def take_tensors(self) -> torch.Tensor | None:
        """The device scalars measured since the last flush, as one 1-D tensor that the
        backend copies to the host together with its own (one device->host copy a flush)."""
        stats, self._pending = self._pending, []
        tensors, slots = [], []
        for st in stats:
            for name in ("local_sq", "global_sq", "final_sq"):
                t = getattr(st, name)
                if isinstance(t, torch.Tensor):
                    slots.append((st, name, len(tensors), 1))
                    tensors.append(t.reshape(1).float())
            if st.micro_sq:
                slots.append((st, "micro", len(tensors), len(st.micro_sq)))
                tensors.extend(t.reshape(1).float() for t in st.micro_sq)
        self._taken = (stats, slots)
        if not tensors:
            return None
        dev = tensors[0].device
        return torch.cat([t.to(dev) for t in tensors])

    def take_taken(self) -> tuple | None:
        """What :meth:`take_tensors` took for this flush (for :meth:`on_flush` on another thread)."""
        taken, self._taken = self._taken, None
        return taken

    def on_flush(self, records: list[StepRecord], host: np.ndarray | None = None, taken: tuple | None = None
                 ) -> tuple[list[StepRecord], list[tuple[int, dict[str, float]]]]:
        """Called by the backend with its decoded records (and the host copy of what
        :meth:`take_tensors` gave it), before the probe ingests them.

        Returns the records (under DDP: merged across ranks) and extra metric rows. The
        cross-rank exchange runs only when there are records: every rank flushes at the
        same step, so all ranks take part (a flush with validation points only does not).
        """
        if taken is None:
            taken = self.take_taken()
        if not taken:
            self.take_tensors()   # called without take_tensors: drop the device values
            taken, host = self.take_taken(), None
        for rec in records:
            rec.rank = self.rank
        if not records:
            return records, []
        try:
            mine = rank_summaries(records, self._host_stats(taken, host))
            if self.sharded:   # FSDP: this rank's pieces of each sharded tensor
                for d, rec in zip(mine, records):
                    d["shards"] = shard_summary(rec, self.sharded)
        except Exception as exc:  # never skip the exchange below: the other ranks wait for it
            self.noise_on = self.micro = False
            self._warn("per-rank summary", exc)
            mine = [{"step": float(r.step)} for r in records]
        gathered = [mine]
        if self.table is not None:
            gathered = self._gather(mine)
            by_record = merge_ranks(records, gathered, self.table)
            if self.sharded:   # the whole tensors' norms from the ranks' pieces
                for rec, rows in zip(records, by_record):
                    merge_shards(rec, self.sharded, self.copies, [r.get("shards") for r in rows])
        try:
            rows = self._noise_rows(gathered)
        except Exception as exc:
            self.noise_on = self.micro = False
            self._warn("noise scale", exc)
            rows = []
        return records, rows

    @staticmethod
    def _host_stats(taken, host: np.ndarray | None) -> dict[int, dict[str, float]]:
        """Per step: samples, forwards and the host values of the measured squared norms."""
        stats, slots = taken
        out: dict[int, dict[str, float]] = {}
        for st in stats:
            d = out.setdefault(st.step, {"samples": float(st.samples), "forwards": float(st.forwards)})
            if st.micro_n:
                d["micro_n"] = float(np.mean(st.micro_n))
                d["micro_total"] = float(np.sum(st.micro_n))
        if host is None:
            return out
        host = np.asarray(host, dtype=float)
        for st, name, a, n in slots:
            if name == "micro":
                out[st.step]["micro_sq"] = float(np.mean(host[a:a + n]))
                out[st.step]["micro_k"] = float(n)
            else:
                out[st.step][name] = float(host[a])
        return out

    def _gather(self, mine: list[dict[str, float]]) -> list[list[dict[str, float]]]:
        d = torch.distributed
        if not (d.is_available() and d.is_initialized()):
            return [mine] + [[] for _ in range(self.world - 1)]
        out: list[Any] = [None] * d.get_world_size()
        d.all_gather_object(out, mine)  # the one cross-rank exchange of this flush
        self.n_gathers += 1
        return [o or [] for o in out]

    def _noise_rows(self, gathered: list[list[dict[str, float]]]) -> list[tuple[int, dict[str, float]]]:
        if not self.noise_on:
            return []
        rows = []
        mine = gathered[self.rank] if self.rank < len(gathered) else gathered[0]
        per_rank = [{int(r["step"]): r for r in g} for g in gathered]
        for r in mine:
            step = int(r["step"])
            if self.world > 1:
                ranks = [pr.get(step, {}) for pr in per_rank]
                loc = [x["local_sq"] for x in ranks if "local_sq" in x]
                n = [x.get("samples", 0.0) for x in ranks if "local_sq" in x]
                if len(loc) != self.world or "global_sq" not in r or min(n) <= 0:
                    continue
                args = (float(np.mean(loc)), r["global_sq"], float(np.mean(n)), float(np.sum(n)))
            else:
                k = r.get("micro_k", 0.0)
                if k < 2 or "final_sq" not in r:
                    continue
                args = (r["micro_sq"], r["final_sq"] / (k * k), r["micro_n"], r["micro_total"])
            v = self.noise.update(step, *args)
            if math.isfinite(v):
                rows.append((step, {"lossprobe/noise_scale": v, "lossprobe/noise_scale_batch": args[3]}))
        return rows


def noise_scale_summary(probe) -> dict[str, Any] | None:
    """The latest smoothed gradient noise scale, the batch it was measured at, and advice.

    Example::

        s = noise_scale_summary(probe)
        # {'noise_scale': 212.0, 'batch': 64.0, 'updates': 37, 'step': 120,
        #  'source': 'ddp', 'advice': None}
    """
    ns = probe.layout.extra.get("noise_scale")
    return ns.to_dict() if isinstance(ns, NoiseScale) and ns.n else None
