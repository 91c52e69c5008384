"""Publish gate: does this run's model earn a new live version?

Rules: recall@10 on the held-out split must reach ``gate.min_recall_at_10`` and,
when ``gate.must_beat_popularity``, strictly beat the popularity baseline's recall@10;
and it may be at most ``gate.max_relative_regression`` (a fraction) below the recall@10
of the live version, which evaluate scored on the same test split and protocol
(``metrics["live"]``, see :mod:`trainer.evaluate`):

- ``live`` is None: the store has no live version; the first publish has no baseline.
- ``live`` has ``error``: the store has a live version but it could not be evaluated
  (corrupt, incompatible, a bug in the comparison): refuse, naming the error, unless
  ``gate.publish_when_live_unusable`` (then publish, saying so) — a broken comparison never
  publishes silently.
- no ``live`` key: evaluate ran without a store (no comparison asked for; the pipeline always
  gives it one): publish with a reason, unless ``gate.require_live_comparison`` (then refuse).

Every rule adds a human sentence with the numbers, whether it passed or failed, so the
run summary always says why. The decision's ``baseline`` names the live version compared
against: ``{"version", "recall_at_10"}`` (``recall_at_10`` None plus ``error`` when it
could not be evaluated), or None (first publish / no comparison made).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from core.config import Config


@dataclass
class GateDecision:
    publish: bool
    reasons: list[str] = field(default_factory=list)
    #: {"version", "recall_at_10"[, "error"]} of the live version compared against, or None.
    baseline: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _metric(metrics: dict, *path: str) -> float:
    node = metrics
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"gate: metrics lack {'.'.join(path)!r} (have {sorted(metrics)})")
        node = node[key]
    return float(node)


def decide(config: Config, metrics: dict) -> GateDecision:
    """Apply the gate to evaluate's ``metrics.json`` content.

    Raises:
        ValueError: a metric a rule needs is missing (a broken evaluate, not a failed gate).
    """
    gate = config.gate
    recall = _metric(metrics, "recall_at_10")
    ok = True
    reasons = []
    if recall >= gate.min_recall_at_10:
        reasons.append(f"recall@10 {recall:.4f} meets the minimum {gate.min_recall_at_10:.4f}")
    else:
        ok = False
        reasons.append(f"recall@10 {recall:.4f} is below the minimum {gate.min_recall_at_10:.4f}")
    if gate.must_beat_popularity:
        pop = _metric(metrics, "popularity", "recall_at_10")
        if recall > pop:
            reasons.append(f"recall@10 {recall:.4f} beats the popularity baseline's {pop:.4f}")
        else:
            ok = False
            reasons.append(f"recall@10 {recall:.4f} does not beat the popularity baseline's {pop:.4f}")
    live_ok, live_reason, baseline = _against_live(config, metrics, recall)
    ok = ok and live_ok
    reasons.append(live_reason)
    return GateDecision(publish=ok, reasons=reasons, baseline=baseline)


def _against_live(config: Config, metrics: dict, recall: float) -> tuple[bool, str, Optional[dict]]:
    """(passes, reason, baseline) of the change threshold against the live version."""
    gate = config.gate
    if "live" not in metrics:
        what = "no live comparison (evaluate ran without a store)"
        if gate.require_live_comparison:
            return False, f"{what}: refused because gate.require_live_comparison is true", None
        return True, f"{what}: publishing without it", None
    live = metrics["live"]
    if live is None:
        return True, "no live version: first publish has no baseline", None
    if not isinstance(live, dict) or "version" not in live:
        raise ValueError(f"gate: metrics.live must be null or a dict with a version, got {live!r}")
    version = live["version"]
    if "error" in live:
        baseline = {"version": version, "recall_at_10": None, "error": str(live["error"])}
        what = f"live version {version} could not be evaluated ({live['error']})"
        if gate.require_live_comparison:
            return False, f"{what}: refused because gate.require_live_comparison is true", baseline
        if not gate.publish_when_live_unusable:
            return False, (f"{what}: refused, a candidate is not published untested against the live version "
                           f"(repair or roll back the live version, or set gate.publish_when_live_unusable=true "
                           f"to publish without the comparison)"), baseline
        return True, (f"{what}: publishing without the live comparison because "
                      f"gate.publish_when_live_unusable is true"), baseline
    live_recall = _metric(live, "recall_at_10")
    baseline = {"version": version, "recall_at_10": live_recall}
    max_drop = gate.max_relative_regression
    floor = live_recall * (1.0 - max_drop)
    if recall >= live_recall:
        return True, (f"recall@10 {recall:.4f} matches or beats live version {version}'s {live_recall:.4f} "
                      f"(allowed regression {max_drop:.1%}, floor {floor:.4f})"), baseline
    if recall >= floor:
        drop = (live_recall - recall) / live_recall
        return True, (f"recall@10 {recall:.4f} is {drop:.1%} below live version {version}'s {live_recall:.4f}, "
                      f"within the allowed {max_drop:.1%} (floor {floor:.4f})"), baseline
    drop = (live_recall - recall) / live_recall
    return False, (f"recall@10 {recall:.4f} is {drop:.1%} below live version {version}'s {live_recall:.4f}, "
                   f"more than the allowed {max_drop:.1%} (floor {floor:.4f})"), baseline
