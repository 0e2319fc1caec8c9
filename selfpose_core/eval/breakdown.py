"""Why targets fail: every target of an :class:`~selfpose_core.eval.evaluate.EvalResult` gets one cause.

Causes, checked in this order for a target that is not correct (AD{D|I} below 10 % of the diameter):

* ``missed``: no estimate of the object in the image;
* ``wrong_identity``: the estimate lies on another object (within half its diameter, nearer to it than to the
  target): the right place was found for the wrong object;
* ``mislocalised``: the estimate is more than one diameter from the target;
* ``depth``: the depth error exceeds 10 % of the diameter and the in-plane error;
* ``in_plane``: the in-plane translation error exceeds 10 % of the diameter;
* ``rotation``: the place is right, the rotation is not (flips and mirrors among them: see the histogram).

:func:`breakdown_table` prints the share of each cause per object and a histogram of the rotation errors
(symmetry-aware) of the targets that failed for rotation.
"""
from __future__ import annotations

import numpy as np

from selfpose_core.eval.evaluate import EvalResult

CAUSES = ("correct", "missed", "wrong_identity", "mislocalised", "depth", "in_plane", "rotation")
ROTATION_BINS_DEG = (0.0, 5.0, 15.0, 45.0, 90.0, 135.0, 180.01)


def failure_causes(result: EvalResult, threshold: float = 0.1) -> np.ndarray:
    """(T,) cause (a string of :data:`CAUSES`) of every target of ``result``, in its target order."""
    t = result.targets
    diam = np.array([result.diameter(int(o)) for o in t["obj_id"]]) if len(t["obj_id"]) else np.zeros(0)
    found = t["found"].astype(bool)
    te = np.linalg.norm(np.stack([np.nan_to_num(t["dz"]), np.nan_to_num(t["dxy"])], 1), axis=1)
    dz, dxy = np.abs(np.nan_to_num(t["dz"])), np.nan_to_num(t["dxy"])
    correct = found & (np.nan_to_num(t["ad_di"], nan=np.inf) < threshold * diam)
    cause = np.full(len(found), "rotation", dtype=object)
    cause[(dxy > threshold * diam)] = "in_plane"
    cause[(dz > threshold * diam) & (dz >= dxy)] = "depth"
    cause[te > diam] = "mislocalised"
    cause[np.nan_to_num(t["other_object"]) > 0] = "wrong_identity"
    cause[~found] = "missed"
    cause[correct] = "correct"
    return cause.astype(str)


def breakdown(result: EvalResult, threshold: float = 0.1) -> dict[str, dict[str, float]]:
    """{object name or "all": {cause: share of the targets}} (shares sum to 1 per row)."""
    cause = failure_causes(result, threshold)
    out = {}
    rows = [(o.name, result.targets["obj_id"] == o.obj_id) for o in result.objects]
    for name, sel in rows + [("all", np.ones(len(cause), bool))]:
        if sel.any():
            out[name] = {c: float((cause[sel] == c).mean()) for c in CAUSES}
    return out


def rotation_histogram(result: EvalResult, threshold: float = 0.1) -> np.ndarray:
    """Counts of the rotation errors (degrees, symmetry-aware) of the targets that failed for rotation, in the
    bins :data:`ROTATION_BINS_DEG`."""
    sel = failure_causes(result, threshold) == "rotation"
    return np.histogram(result.targets["re"][sel], bins=ROTATION_BINS_DEG)[0]


def confidence_precision(result: EvalResult, score_threshold: float, threshold: float = 0.1) -> tuple[float, int]:
    """(share of the estimates with ``score >= score_threshold`` that are correct, their number): what a user of
    the published poses above that confidence gets. Estimates matched to no target (objects not in the image,
    surplus estimates) count as wrong; NaN when none reaches the threshold."""
    t = result.targets
    cause = failure_causes(result, threshold)
    above = t["found"].astype(bool) & (np.nan_to_num(t["score"], nan=-np.inf) >= score_threshold)
    n = int(above.sum() + (result.unmatched_scores >= score_threshold).sum())
    return (float((cause[above] == "correct").sum() / n) if n else float("nan")), n


def breakdown_table(result: EvalResult, threshold: float = 0.1) -> str:
    """Aligned text: per object the share (%) of targets per cause, then the rotation-failure histogram."""
    rows = breakdown(result, threshold)
    width = max([len("object")] + [len(n) for n in rows])
    head = "object".ljust(width) + "".join(f"{c:>15}" for c in CAUSES)
    lines = [head, "-" * len(head)]
    for name, shares in rows.items():
        lines.append(name.ljust(width) + "".join(f"{100 * shares[c]:>15.1f}" for c in CAUSES))
    hist = rotation_histogram(result, threshold)
    edges = ROTATION_BINS_DEG
    bins = ", ".join(f"{edges[i]:.0f}-{min(edges[i + 1], 180):.0f} deg: {n}" for i, n in enumerate(hist))
    lines.append(f"rotation failures by error: {bins}")
    return "\n".join(lines)
