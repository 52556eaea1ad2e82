"""Where the probe's added step time goes in Keras ``fit`` (the benchmark MLP), step by step.

``overhead_keras.py`` times whole ``fit`` calls; on a noisy machine a 20-step fit moves by
10-20% from one call to the next, too much to see a part worth 1-3%. Here two compiled copies
(same seed; which one carries the probe alternates per block) run fit's per-step work in
lockstep, one step each in turn: the probe's batch callback (``on_train_batch_begin``: the
flush every ``flush_every`` steps) and ``model.train_function``, the function fit calls per
batch. Each step is timed alone, so drift on the machine hits both copies alike. The added
time per step is the configured copy's step minus the twin's step next to it, averaged over
20 consecutive steps (one flush, two sampled steps); the median over those groups is printed
with its 95% confidence interval (block bootstrap, ``_ratio.Paired``), and beside it the
median added time on sampled steps and on the others, and the groups' time ratio (the
configured copy's 20 steps over the twin's 20 beside them). The probe's worker thread (decoding,
rules) runs beside both copies' steps, so a little of its time lands on the twin.

    python benchmarks/overhead_keras_parts.py              # 6 blocks x 200 steps per copy, ~3 min
    python benchmarks/overhead_keras_parts.py --blocks 10 --configs default,floor
    python benchmarks/overhead_keras_parts.py --jit         # the same step compiled by XLA
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

from overhead_keras import BATCH, keras, lossprobe, make_model, np, tf   # one thread, TensorFlow only
from _parts import PART_CONFIGS
from _ratio import GLIBC_DEFAULT_FLAG, Paired, fixed_malloc, malloc_note

from lossprobe.capture.spec import is_sampled

GROUP = 20   # steps per averaged group: one flush and two sampled steps at the defaults


def block(cfg, flip: bool, batch, args) -> tuple[list[float], list[float], list[float], list[float]]:
    """(added us per step for each group of GROUP steps, the group's time ratio configured / twin,
    the added us on each sampled step, on each other step)."""
    keras.backend.clear_session()
    pair = [make_model(args.jit), make_model(args.jit)]
    if flip:
        pair.reverse()
    probe = lossprobe.attach(pair[1], sinks=[], config=cfg) if cfg is not None else None
    x, y = batch
    for m in pair:   # traces the step functions (the probe installs its own at fit begin)
        m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    callback = probe._backend.fit_callback() if probe is not None else None
    if callback is not None:
        callback.set_model(pair[1])
        callback.on_train_begin()
        callback.on_epoch_begin(0)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    iterators = [iter(data), iter(data)]
    clock = time.perf_counter

    def step(i: int, k: int) -> float:
        t = clock()
        if i == 1 and callback is not None:
            callback.on_train_batch_begin(k)
        pair[i].train_function(iterators[i])
        return clock() - t

    for k in range(args.warm):
        step(0, k), step(1, k)
    first = probe._backend._next_step if probe is not None else args.warm
    timed = [(step(0, k), step(1, k)) for k in range(args.warm, args.warm + args.steps)]   # (twin, configured)
    added = [(c - t) * 1e6 for t, c in timed]
    if callback is not None:
        callback.on_epoch_end(0, {})
        callback.on_train_end()
        probe.detach()
    every = cfg.activation_every if cfg is not None else 10
    sampled = [bool(is_sampled(first + k, every)) for k in range(len(added))]
    starts = range(0, len(added) - GROUP + 1, GROUP)
    groups = [statistics.fmean(added[k:k + GROUP]) for k in starts]
    ratios = [sum(c for _, c in timed[k:k + GROUP]) / sum(t for t, _ in timed[k:k + GROUP]) for k in starts]
    return groups, ratios, [a for a, s in zip(added, sampled) if s], [a for a, s in zip(added, sampled) if not s]


def _median(values: list[float]) -> str:
    """The median, printed to the microsecond ("-" when there are no such steps)."""
    return f"{statistics.median(values):6.0f}" if values else "     -"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--steps", type=int, default=200, help="timed steps per copy and block")
    ap.add_argument("--warm", type=int, default=40, help="untimed steps per copy first")
    ap.add_argument("--configs", default="", help="comma-separated names (a prefix is enough)")
    ap.add_argument("--jit", action="store_true", help="compile with jit_compile=True (XLA)")
    ap.add_argument(GLIBC_DEFAULT_FLAG, action="store_true", help="keep glibc's heap trimming (benchmarks/_ratio.py)")
    args = ap.parse_args()
    fixed_malloc()
    print(f"# {malloc_note()}")
    names = [n for n in PART_CONFIGS if not args.configs or any(n.startswith(c) for c in args.configs.split(","))]
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((BATCH, 784), dtype=np.float32), rng.integers(0, 10, BATCH).astype(np.int64))
    groups = {n: [] for n in names}
    ratios = {n: [] for n in names}
    on = {n: ([], []) for n in names}
    for b in range(args.blocks):
        k = b % len(names)
        for n in names[k:] + names[:k]:
            g, q, s, u = block(PART_CONFIGS[n], bool(b % 2), batch, args)
            groups[n].append(g)
            ratios[n].append(q)
            on[n][0].extend(s)
            on[n][1].extend(u)
    print(f"# keras MLP{' (jit_compile=True)' if args.jit else ''}, fit's per-step work in lockstep, {args.blocks} blocks x {args.steps} steps per copy; "
          f"added us/step against the twin's step beside it: mean over {GROUP}-step groups, median over "
          "the groups (its 95% CI, block bootstrap) | median on sampled steps | on the others | the groups' "
          "time ratio configured / twin (median, 95% CI)")
    for n in names:
        r, q = Paired.from_blocks(groups[n]), Paired.from_blocks(ratios[n])
        s, u = on[n]
        label = "A/A: nothing attached" if n == "plain" else n
        print(f"{label:42s} {r.median:6.0f} ({r.lo:.0f} to {r.hi:.0f}) | {_median(s)} | {_median(u)} | "
              f"{q.median:.3f} ({q.lo:.3f}-{q.hi:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
