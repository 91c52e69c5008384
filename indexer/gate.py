"""Publish gate: does this run's model earn a new live version?

Rules: recall@10 on the held-out split must reach ``gate.min_recall_at_10`` and,
when ``gate.must_beat_popularity``, strictly beat the popularity baseline's recall@10.
Every rule adds a human sentence with the numbers, whether it passed or failed, so the
run summary always says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.config import Config


@dataclass
class GateDecision:
    publish: bool
    reasons: list[str] = field(default_factory=list)

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
    return GateDecision(publish=ok, reasons=reasons)
