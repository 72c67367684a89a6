"""Gate diagnostics: how each task spreads its weight over the experts.

A healthy MMoE has tasks that use several experts and use them differently; a collapsed gate
puts (almost) all its weight on one expert for every input, which turns the model into a
shared-bottom one for that task.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mmoe_model.errors import ModelInputError

COLLAPSE_THRESHOLD = 0.9  # mean weight of the top expert above this: the gate has collapsed


def gate_summary(gates: Any, task_names: Sequence[str],
                 collapse_threshold: float = COLLAPSE_THRESHOLD) -> dict[str, dict[str, Any]]:
    """Per task, from gate weights [T, B, E] (rows summing to 1):

    * ``mean_weight``: list of E, the mean weight of each expert over the batch;
    * ``entropy``: mean per-row entropy (nats); ``normalized_entropy``: that over ``log(E)``
      (1 = uniform gates, 0 = one-hot gates);
    * ``top_expert`` / ``max_mean_weight``: the most used expert and its mean weight;
    * ``collapsed``: ``max_mean_weight > collapse_threshold``;
    * ``usage``: list of E, the fraction of rows giving the expert a non-zero weight (below 1
      only for sparse gates: ``topk`` / ``max``; an expert at 0 is starved).

    Archs without gates give E = 0: every task then maps to an empty summary with
    ``collapsed`` False.
    """
    g = np.asarray(gates, dtype=np.float64)
    if g.ndim != 3 or g.shape[0] != len(task_names):
        raise ModelInputError(f"gates must be [T={len(task_names)}, B, E], got {list(g.shape)}")
    _, batch, experts = g.shape
    out: dict[str, dict[str, Any]] = {}
    for t, task in enumerate(task_names):
        if experts == 0 or batch == 0:
            out[task] = {"mean_weight": [], "entropy": None, "normalized_entropy": None,
                         "top_expert": None, "max_mean_weight": None, "collapsed": False,
                         "usage": []}
            continue
        w = g[t]
        mean = w.mean(axis=0)
        # 0 * log 0 = 0: clip only inside the log.
        entropy = float(-(w * np.log(np.clip(w, 1e-12, None))).sum(axis=1).mean())
        top = int(mean.argmax())
        out[task] = {
            "mean_weight": [float(v) for v in mean],
            "entropy": entropy,
            "normalized_entropy": float(entropy / np.log(experts)) if experts > 1 else 0.0,
            "top_expert": top,
            "max_mean_weight": float(mean[top]),
            "collapsed": bool(mean[top] > collapse_threshold),
            "usage": [float(v) for v in (w > 0).mean(axis=0)],
        }
    return out
