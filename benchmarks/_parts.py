"""The configurations the "where the time goes" benchmarks switch through, one public
``Config`` field at a time (``overhead_parts.py`` for torch, ``overhead_keras_parts.py`` for
Keras). No framework is imported here: each script runs in its framework's own process.

    from _parts import PART_CONFIGS
    for name, cfg in PART_CONFIGS.items(): ...   # cfg None: nothing attached (the A/A pair)
"""
from __future__ import annotations

import lossprobe

C = lossprobe.Config
PART_CONFIGS: dict[str, "lossprobe.Config | None"] = {
    "plain": None,
    "default": C(),
    "no input check (capture_inputs=False)": C(capture_inputs=False),
    "rules and decoding inline (background=False)": C(background=False),
    "no rules (rules_every=1e9)": C(rules_every=10**9),
    "no sampled steps (activation_every=1e9)": C(activation_every=10**9),
    "floor: hooks, loss, gradient norms, flush": C(capture_inputs=False, capture_outputs=False,
                                                   rules_every=10**9, activation_every=10**9),
}
