"""The run summary contract (``summary.json``), written by the publish step of every run.

Fields: run_id, metrics (recall@K, ndcg@10, popularity recall@10), item popularity
slices (head / torso / tail / cold recall@10 vs popularity, when evaluated), index
figures (recall vs exact, queries/s), published yes/no with the reasons, the version,
and seconds per stage.
"""

from __future__ import annotations

import json
import time
from typing import Mapping

# File names of the run and stage contract live in core.contracts (defined once); they are
# re-exported here for the modules that have always imported them from core.summary.
from core.contracts.files import (PIPELINE_LOG, REPORT_HTML_FILE, REPORT_MARKDOWN_FILE, RUN_FILE,  # noqa: F401
                                  STAGE_ERROR_FILE, STAGE_FILE, SUMMARY_FILE)


def stage_record(stage: str, seconds: float, result: Mapping, resources: Mapping | None = None) -> dict:
    """What each stage leaves beside its outputs: name, wall seconds, its result dict, and
    (``resources``, see :func:`stage_resources`) its CPU seconds and peak RSS when measured."""
    record = {"stage": stage, "seconds": round(float(seconds), 3), "result": dict(result)}
    if resources:
        record.update(resources)
    return record


def stage_resources(cpu_started: float) -> dict:
    """``{"cpu_seconds", "peak_rss_mb"}`` of the stage that started at process CPU time
    ``cpu_started`` (:func:`cpu_seconds_now`): CPU seconds (user + system) of this process and
    of its waited-for children (Beam's multi-processing workers) since then, and the larger of
    this process's and its largest child's peak resident set, MB (10^6 bytes). Each KFP step is
    its own process, so the peak is the step's (its imports included)."""
    own, children = _usage()
    peak_kb = max(own.ru_maxrss, children.ru_maxrss)  # Linux: kilobytes
    return {"cpu_seconds": round(cpu_seconds_now() - cpu_started, 3), "peak_rss_mb": round(peak_kb * 1024 / 1e6, 1)}


def cpu_seconds_now() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own, children = _usage()
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _usage():
    """(this process's, its reaped children's) ``resource.getrusage`` records."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)


def build_summary(run_id: str, stages: list[dict], metrics: Mapping, index_metrics: Mapping,
                  publish_result: Mapping) -> dict:
    """Assemble summary.json from the stage records and the publish decision.

    Args:
        stages: :func:`stage_record` dicts in pipeline order (publish last).
        metrics: evaluation metrics.json (recall_at_K, ndcg_at_10, popularity {...},
            optional slices {...}).
        index_metrics: index_metrics.json.
        publish_result: {"published", "version", "reasons", "store"}.
    """
    popularity = metrics.get("popularity", {})
    return {
        "run_id": run_id,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": {
            **{k: v for k, v in metrics.items() if k.startswith(("recall_at_", "ndcg_at_"))},
            "popularity_recall_at_10": popularity.get("recall_at_10"),
            "n_queries": metrics.get("n_queries"),
        },
        # {"head": {"recall_at_10", "popularity_recall_at_10", "n"}, ..., "cold": {...,
        # "chance_recall_at_10"}}; None when evaluation ran without slices.
        "slices": _copy(metrics.get("slices")),
        "index": {
            "kind": index_metrics.get("kind"),
            "n_items": index_metrics.get("n_items"),
            "recall_at_10_vs_exact": index_metrics.get("recall_at_10_vs_exact"),
            "qps_batched": index_metrics.get("qps_batched"),
            "qps_single": index_metrics.get("qps_single"),
            "qps_brute_force": index_metrics.get("qps_brute_force"),
            "speedup_vs_brute_force": index_metrics.get("speedup_vs_brute_force"),
            "params": index_metrics.get("params"),
            "tuning": index_metrics.get("tuning"),
        },
        "published": bool(publish_result.get("published")),
        "baseline": publish_result.get("baseline"),
        "version": publish_result.get("version"),
        "reasons": list(publish_result.get("reasons", [])),
        "store": publish_result.get("store"),
        "stage_seconds": {s["stage"]: s["seconds"] for s in stages},
        # {stage: {"cpu_seconds", "peak_rss_mb"}} for the stages that measured them.
        "stage_resources": {s["stage"]: {k: s[k] for k in ("cpu_seconds", "peak_rss_mb")}
                            for s in stages if "cpu_seconds" in s},
    }


def _copy(slices: Mapping | None) -> dict | None:
    """A plain-dict copy, so the summary never aliases the caller's metrics."""
    return None if slices is None else {name: dict(values) for name, values in slices.items()}


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
