"""Publish gate: does this run's model earn a new live version?

Rules: recall@10 on the held-out split must reach ``gate.min_recall_at_10`` and,
when ``gate.must_beat_popularity``, strictly beat the popularity baseline's recall@10;
and it may be at most ``gate.max_relative_regression`` (a fraction) below the recall@10
of the live version, which evaluate scored on the same test split and protocol
(``metrics["live"]``, see :mod:`evaluation.evaluate`):

- ``live`` is None: the store has no live version; the first publish has no baseline.
- ``live`` has ``error``: the store has a live version but it could not be evaluated
  (corrupt, incompatible, a bug in the comparison): refuse, naming the error, unless
  ``gate.publish_when_live_unusable`` (then publish, saying so) — a broken comparison never
  publishes silently.
- no ``live`` key: evaluate ran without a store (no comparison asked for; the pipeline always
  gives it one): publish with a reason, unless ``gate.require_live_comparison`` (then refuse).
- ``live`` has ``candidate``: the live version was refit on every split (``train.refit``), so it
  trained on the test pairs this run's data still holds; evaluate scored both on the keys whose
  test items the live version never saw, and the rule compares the candidate's recall@10 there
  (``live["candidate"]``) with live's there.

Sampled evaluation (``metrics["sampled"]``: evaluate scored a seeded sample of the test
keys, the same one for the candidate, popularity and live): the numbers are estimates with
95% intervals, and the comparison with live uses the paired difference candidate minus
live on the sampled keys (``metrics["live"]["diff"]["recall_at_10"]``). A candidate whose
estimate falls below the floor is refused only when the whole interval of that difference
lies below the allowed drop (``max_relative_regression`` x live's estimate): the regression
beyond the allowance is then not sampling noise. Inside the noise it publishes, saying so
(raise ``evaluate.max_queries``, or set 0 for all keys, to decide such a case exactly). The
allowance is taken at live's estimate; its own sampling error is ``max_relative_regression``
times live's, small beside the difference's. The minimum and the popularity rules stay on
the estimates (a model must show it beats them) and their reasons quote the intervals. An
exact evaluation (all keys; or a metrics.json from before sampling) applies the plain
thresholds.

Every rule adds a human sentence with the numbers, whether it passed or failed, so the
run summary always says why. The decision's ``baseline`` names the live version compared
against: ``{"version", "recall_at_10"}`` (plus ``"diff_ci95"``, the paired interval, when
sampled; ``recall_at_10`` None plus ``error`` when it could not be evaluated), or None
(first publish / no comparison made).
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
    #: train.cascade: whether the pre-ranker is published with the version (None: the run has none).
    cascade: Optional[bool] = None

    def to_dict(self) -> dict:
        return asdict(self)


def _node(metrics: dict, *path: str):
    node = metrics
    for key in path:
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"gate: metrics lack {'.'.join(path)!r} (have {sorted(metrics)})")
        node = node[key]
    return node


def _metric(metrics: dict, *path: str) -> float:
    return float(_node(metrics, *path))


def _interval(metrics: dict, *path: str) -> tuple[float, float]:
    lo, hi = _node(metrics, *path)
    return float(lo), float(hi)


def _sample_note(metrics: dict) -> str:
    """Which keys the numbers come from, for reasons of a sampled evaluation."""
    return (f"{int(_metric(metrics, 'n_queries')):,} of {int(_metric(metrics, 'n_queries_total')):,} "
            f"test queries sampled")


def decide(config: Config, metrics: dict) -> GateDecision:
    """Apply the gate to evaluate's ``metrics.json`` content.

    Raises:
        ValueError: a metric a rule needs is missing (a broken evaluate, not a failed gate).
    """
    gate = config.gate
    recall = _metric(metrics, "recall_at_10")
    sampled = bool(metrics.get("sampled"))
    ok = True
    reasons = []
    own = ""
    if sampled:
        lo, hi = _interval(metrics, "ci95", "recall_at_10")
        own = f" (95% interval [{lo:.4f}, {hi:.4f}], {_sample_note(metrics)})"
    if recall >= gate.min_recall_at_10:
        reasons.append(f"recall@10 {recall:.4f} meets the minimum {gate.min_recall_at_10:.4f}{own}")
    else:
        ok = False
        reasons.append(f"recall@10 {recall:.4f} is below the minimum {gate.min_recall_at_10:.4f}{own}")
    if gate.must_beat_popularity:
        pop = _metric(metrics, "popularity", "recall_at_10")
        paired = ""
        if sampled:
            lo, hi = _interval(metrics, "popularity", "diff", "recall_at_10", "ci95")
            paired = f" (model - popularity 95% interval [{lo:+.4f}, {hi:+.4f}] on the same sampled queries)"
        if recall > pop:
            reasons.append(f"recall@10 {recall:.4f} beats the popularity baseline's {pop:.4f}{paired}")
        else:
            ok = False
            reasons.append(f"recall@10 {recall:.4f} does not beat the popularity baseline's {pop:.4f}{paired}")
    live_ok, live_reason, baseline = _against_live(config, metrics, recall)
    ok = ok and live_ok
    reasons.append(live_reason)
    cascade, cascade_reason = _cascade(config, metrics)
    if cascade_reason:
        reasons.append(cascade_reason)
    return GateDecision(publish=ok, reasons=reasons, baseline=baseline, cascade=cascade)


def _cascade(config: Config, metrics: dict) -> tuple[Optional[bool], str]:
    """(whether the pre-ranker is published, reason); (None, "") when the run has none.

    It goes out with the version only when re-ranking raised recall@10 over retrieval alone by more
    than ``gate.cascade_min_gain`` on the held-out keys (the paired mean of cascade minus retrieval).
    A pre-ranker that does not is left out; the retrieval model is judged by the rules above alone.
    """
    cascade = metrics.get("cascade")
    if not cascade:
        return None, ""
    alone = _metric(cascade, "retrieval", "recall_at_10")
    ranked = _metric(cascade, "cascade", "recall_at_10")
    gain = _metric(cascade, "cascade", "diff", "recall_at_10", "mean")
    lo, hi = _interval(cascade, "cascade", "diff", "recall_at_10", "ci95")
    latency = ((cascade.get("latency_ms") or {}).get(str(cascade.get("top_n"))) or {}).get("p50")
    detail = (f"pre-ranker over the top {cascade.get('top_n')}: recall@10 {ranked:.4f} vs retrieval alone "
              f"{alone:.4f} (gain {gain:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}]"
              + (f"; +{latency:.2f} ms per query" if latency is not None else "") + ")")
    floor = config.gate.cascade_min_gain
    if gain > floor:
        return True, f"{detail}: published with the version (gain above gate.cascade_min_gain {floor:.4f})"
    return False, (f"{detail}: NOT published, the version serves retrieval alone (gain not above "
                   f"gate.cascade_min_gain {floor:.4f})")


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
    if "candidate" in live:  # compared on the keys a refit live version never trained on
        recall = _metric(live, "candidate", "recall_at_10")
        baseline.update({"candidate_recall_at_10": recall, "compared_on": live.get("compared_on")})
    max_drop = gate.max_relative_regression
    floor = live_recall * (1.0 - max_drop)
    noise, within_noise = "", False
    if "candidate" in live:
        noise = f"; compared on {live.get('compared_on')}"
    if metrics.get("sampled"):
        diff = _metric(live, "diff", "recall_at_10", "mean")
        lo, hi = _interval(live, "diff", "recall_at_10", "ci95")
        baseline["diff_ci95"] = [lo, hi]
        allowed = live_recall * max_drop
        # Refuse only a regression beyond the allowance that the sampling cannot explain:
        # the paired interval's upper end is below the allowed drop.
        within_noise = hi >= -allowed
        noise += (f"; model - live {diff:+.4f}, 95% interval [{lo:+.4f}, {hi:+.4f}] on the same "
                 f"{_sample_note(metrics)}")
    if recall >= live_recall:
        return True, (f"recall@10 {recall:.4f} matches or beats live version {version}'s {live_recall:.4f} "
                      f"(allowed regression {max_drop:.1%}, floor {floor:.4f}){noise}"), baseline
    drop = (live_recall - recall) / live_recall
    if recall >= floor:
        return True, (f"recall@10 {recall:.4f} is {drop:.1%} below live version {version}'s {live_recall:.4f}, "
                      f"within the allowed {max_drop:.1%} (floor {floor:.4f}){noise}"), baseline
    what = (f"recall@10 {recall:.4f} is {drop:.1%} below live version {version}'s {live_recall:.4f}, "
            f"more than the allowed {max_drop:.1%} (floor {floor:.4f}){noise}")
    if within_noise:
        return True, (f"{what}: publishing, because the interval reaches the allowed drop of -"
                      f"{live_recall * max_drop:.4f}, so the excess may be sampling noise (raise "
                      f"evaluate.max_queries, or set it to 0 for all queries, to decide it exactly)"), baseline
    if noise:
        what += (f": refused, the whole interval lies below the allowed drop of -{live_recall * max_drop:.4f}, "
                 f"so the regression is not sampling noise")
    return False, what, baseline
