"""ScaNN auto-tuning: the fastest tree + AH + reorder configuration that meets a recall target.

Recall is tie-aware recall@10 against exact (numpy) search over a sample of queries
(:func:`indexer.scann_index.recall_tie_aware`: a retrieved item scoring at least the exact
10th score counts, so a block of identical item vectors cannot cap recall below 1); speed is
queries/s of ``search_batched`` (one call for the whole query sample, final top-10) and of
one-query ``search`` calls. The sweep is shaped by what is expensive:

- building (k-means tree + anisotropic-hashing codebooks + encoding every item) is the cost,
  so one index is built per (num_leaves, dims_per_block) pair: num_leaves around sqrt(N)
  times ``index.tune_leaves_factors``, AH with ``anisotropic_quantization_threshold`` 0.2;
- leaves searched and the exact re-scoring pool (reorder_k) are search-time knobs:
  ``search_batched(leaves_to_search=..., pre_reorder_num_neighbors=...)`` overrides them on
  the built index, so they are swept for free apart from the searches themselves;
- for each reorder_k, leaves searched climb a geometric ladder (x ~1.4) and stop at the first
  value that meets the target (searching more leaves only costs time after that) or when
  recall has plateaued (the re-scoring pool is then the limit).

Every point measured is kept (the recall / queries/s curve, ``tuning.json`` + a Markdown
table + an SVG plot). ScaNN's exact (brute-force) searcher is measured as one more point, so
the choice is never slower than exact search. The winner is the fastest point that meets the
target; when none does, the highest-recall point (fastest among equals), flagged as a fallback.
The chosen index is returned with its search-time parameters baked in as defaults
(:func:`indexer.scann_index.with_search_defaults`), so plain ``search_batched`` calls get them.

Timing is the best of at least ``repeats`` runs (and at least ``timing_seconds`` of runs): on
machines shared with other jobs the minimum is the estimate least disturbed by them. Every
point that meets the target is timed a second time before the choice, keeping the better run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np

from core.config import IndexConfig
from core.svg_chart import Mark, Series, VLine, line_chart
from indexer.scann_index import (BRUTE_FORCE, TREE_AH, IndexParams, build_with_params, exact_topk_chunked,
                                 kth_exact_scores, recall_tie_aware, recall_vs_exact, with_search_defaults)

K = 10
#: Leaves-searched ladder: from ~0.2% of the leaves up to this fraction, ratio LADDER_RATIO.
MIN_LEAVES_FRACTION = 0.002
MAX_LEAVES_FRACTION = 0.3
LADDER_RATIO = 1.4
#: Stop climbing the leaves ladder once this many steps in a row add less than PLATEAU_GAIN
#: recall: the re-scoring pool, not the leaves searched, is what limits recall then.
PLATEAU_STEPS = 2
PLATEAU_GAIN = 0.002
#: Keep re-running a timed search until this much time was spent (best run reported).
MIN_TIMED_SECONDS = 0.25


@dataclass
class TuningPoint:
    """One measured configuration (a point of the recall / speed curve)."""

    kind: str
    num_leaves: Optional[int]
    dims_per_block: Optional[int]
    num_leaves_to_search: Optional[int]
    reorder_k: Optional[int]
    recall_at_10: float
    qps_batched: float
    qps_single: float
    meets_target: bool


@dataclass
class TuningResult:
    """What :func:`tune` found. ``searcher`` (not serialised) carries the chosen defaults."""

    n_items: int
    dims: int
    n_queries: int
    target_recall: float
    met_target: bool
    reason: str
    chosen: IndexParams
    chosen_point: TuningPoint
    points: list[TuningPoint]
    exact_numpy_qps_batched: float
    build_seconds: dict[str, float]
    seconds: float
    searcher: object = field(default=None, repr=False)
    #: "tie_aware" (:func:`recall_tie_aware`) or "id_overlap" (:func:`recall_vs_exact`).
    recall_definition: str = "tie_aware"

    @property
    def trees_built(self) -> int:
        """Tree + AH indexes built (the expensive part); the exact searcher is not counted."""
        return sum(1 for key in self.build_seconds if key != BRUTE_FORCE)

    def to_dict(self) -> dict:
        """JSON-ready (the content of ``tuning.json``)."""
        return {
            "n_items": self.n_items, "dims": self.dims, "n_queries": self.n_queries,
            "k": K, "recall_definition": self.recall_definition,
            "target_recall": self.target_recall, "met_target": self.met_target,
            "reason": self.reason, "chosen": self.chosen.to_dict(), "chosen_point": asdict(self.chosen_point),
            "configs_tried": len(self.points), "indexes_built": self.trees_built,
            "build_seconds": self.build_seconds, "seconds": round(self.seconds, 3),
            "exact_numpy_qps_batched": self.exact_numpy_qps_batched,
            "points": [asdict(p) for p in self.points],
        }

    def summary(self) -> dict:
        """The short form recorded in ``index_metrics.json`` under ``tuning``."""
        p = self.chosen_point
        return {"enabled": True, "recall_definition": self.recall_definition,
                "target_recall": self.target_recall, "met_target": self.met_target,
                "reason": self.reason, "chosen": self.chosen.to_dict(), "recall_at_10_vs_exact": p.recall_at_10,
                "qps_batched": p.qps_batched, "qps_single": p.qps_single,
                "configs_tried": len(self.points), "indexes_built": self.trees_built,
                "seconds": round(self.seconds, 3)}


def leaves_ladder(num_leaves: int) -> list[int]:
    """Increasing leaves-to-search values for a tree with ``num_leaves`` leaves."""
    lo = max(1, int(round(num_leaves * MIN_LEAVES_FRACTION)))
    hi = max(lo, int(math.ceil(num_leaves * MAX_LEAVES_FRACTION)))
    out, v = [], float(lo)
    while int(round(v)) <= hi:
        if not out or int(round(v)) > out[-1]:
            out.append(int(round(v)))
        v *= LADDER_RATIO
    if out[-1] != hi:
        out.append(hi)
    return out


def leaves_candidates(n: int, cfg: IndexConfig) -> list[int]:
    """num_leaves values to build: sqrt(n) x factors (or the configured num_leaves), <= training sample."""
    sample = min(n, cfg.training_sample_size)
    if cfg.num_leaves:
        base = [cfg.num_leaves]
    else:
        base = [int(round(math.sqrt(n) * f)) for f in cfg.tune_leaves_factors]
    # k-means needs several training points per leaf to be worth anything.
    return sorted({max(2, min(b, sample // 10 or 1)) for b in base})


def _timed(fn, repeats: int, min_seconds: float = MIN_TIMED_SECONDS, max_runs: int = 20) -> float:
    """Best wall time of ``fn()`` over at least ``repeats`` runs and at least ``min_seconds`` in all."""
    best, spent, runs = math.inf, 0.0, 0
    while runs < max(1, repeats) or (spent < min_seconds and runs < max_runs):
        t = time.perf_counter()
        fn()
        took = time.perf_counter() - t
        best, spent, runs = min(best, took), spent + took, runs + 1
    return max(best, 1e-9)


def _measure_point(searcher, queries: np.ndarray, recall_of, k: int, leaves: Optional[int],
                   reorder: Optional[int], repeats: int, single_queries: int,
                   min_seconds: float = MIN_TIMED_SECONDS) -> tuple[float, float, float]:
    """(recall, queries/s batched, queries/s single); ``recall_of(found int [Q, k]) -> float``."""
    kwargs = {"final_num_neighbors": k}
    if leaves is not None:
        kwargs["leaves_to_search"] = int(leaves)
    if reorder is not None:
        kwargs["pre_reorder_num_neighbors"] = int(reorder)
    found, _ = searcher.search_batched(queries, **kwargs)
    recall = recall_of(np.asarray(found))
    batched = _timed(lambda: searcher.search_batched(queries, **kwargs), repeats, min_seconds)
    single = queries[:single_queries]
    one = {"final_num_neighbors": k,
           "leaves_to_search": -1 if leaves is None else int(leaves),
           "pre_reorder_num_neighbors": -1 if reorder is None else int(reorder)}

    def _singles():
        for q in single:
            searcher.search(q, **one)

    single_s = _timed(_singles, max(1, repeats - 1), min_seconds)
    return round(recall, 4), round(len(queries) / batched, 1), round(len(single) / single_s, 1)


def exact_numpy_qps(db: np.ndarray, queries: np.ndarray, k: int = K, repeats: int = 1,
                    similarity: str = "cosine") -> tuple[np.ndarray, float]:
    """(exact top-k indices [Q, k], numpy brute-force queries/s, best of ``repeats``)."""
    holder = {}

    def _run():
        holder["idx"] = exact_topk_chunked(db, queries, k, similarity=similarity)

    seconds = _timed(_run, repeats)
    return holder["idx"], round(len(queries) / seconds, 1)


def tune(db: np.ndarray, queries: np.ndarray, cfg: IndexConfig, *, build_k: int = 100,
         repeats: int = 3, single_queries: int = 100, include_brute_force: bool = True,
         reorder_ladder: Optional[Sequence[int]] = None, timing_seconds: float = MIN_TIMED_SECONDS,
         tie_aware: bool = True, log=None, similarity: str = "cosine") -> TuningResult:
    """Sweep and choose.

    Args:
        db: float32 [N, D] item embeddings (row i = index position i), unit rows for cosine.
        queries: float32 [Q, D] queries (a sample of real or stand-in queries).
        cfg: index section: target_recall, brute_force_below, training_sample_size,
            num_leaves (fixes the tree size if set), tune_leaves_factors, tune_dims_per_block,
            tune_reorder_k.
        build_k: default neighbours of the built searchers (searches here ask for top-10).
        repeats: timed repeats per point, best taken.
        single_queries: queries timed one call each, per point.
        include_brute_force: also measure ScaNN's exact searcher and let it win if faster.
        reorder_ladder: overrides ``cfg.tune_reorder_k``.
        timing_seconds: keep repeating a timed search until this long was spent (best run kept).
        tie_aware: measure :func:`recall_tie_aware` (the default); False = the old id-overlap
            :func:`recall_vs_exact`, kept so benchmarks can show what ties did to it.
        log: optional callable(str) for progress lines.
        similarity: the model's (core/similarity.py): the searchers' distance measure and the
            exact reference's score.
    Returns:
        TuningResult; ``.searcher`` is the chosen searcher with its search-time parameters as
        defaults. Below ``cfg.brute_force_below`` items no sweep runs: exact search, recall 1.
    """
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    db = np.ascontiguousarray(db, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, d = db.shape
    k = min(K, n)
    build_k = max(k, min(build_k, n))
    target = float(cfg.target_recall)
    exact, numpy_qps = exact_numpy_qps(db, queries, k, similarity=similarity)
    say(f"exact numpy: {numpy_qps:.0f} q/s batched over {len(queries)} queries, N={n}")
    definition = "tie_aware" if tie_aware else "id_overlap"
    if tie_aware:
        kth = kth_exact_scores(db, queries, exact, similarity)  # once: every point compares with it

        def recall_of(found):
            return recall_tie_aware(found, exact, db, queries, kth=kth, similarity=similarity)
    else:
        def recall_of(found):
            return recall_vs_exact(found, exact)
    points: list[TuningPoint] = []
    build_seconds: dict[str, float] = {}

    def _brute_force_point():
        t = time.perf_counter()
        searcher = build_with_params(db, IndexParams(kind=BRUTE_FORCE), k=build_k, similarity=similarity)
        build_seconds[BRUTE_FORCE] = round(time.perf_counter() - t, 3)
        rec, qb, qs = _measure_point(searcher, queries, recall_of, k, None, None, repeats, single_queries,
                                     timing_seconds)
        point = TuningPoint(BRUTE_FORCE, None, None, None, None, rec, qb, qs, rec >= target)
        points.append(point)
        say(f"brute force: recall {rec:.4f}, {qb:.0f} q/s batched, {qs:.0f} q/s single")
        return point, searcher

    if n < cfg.brute_force_below:
        point, searcher = _brute_force_point()
        return TuningResult(n, d, len(queries), target, point.meets_target,
                            f"{n} items < index.brute_force_below={cfg.brute_force_below}: exact search, no sweep",
                            IndexParams(kind=BRUTE_FORCE), point, points, numpy_qps, build_seconds,
                            time.perf_counter() - start, searcher, definition)

    sample = min(n, cfg.training_sample_size)
    reorders = sorted({max(k, int(r)) for r in (reorder_ladder or cfg.tune_reorder_k)})
    # Every built index stays alive until the choice is made (a few hundred MB each at 1M x 64):
    # the confirmation pass below re-times candidates on them.
    built: dict[tuple, object] = {}

    for dpb in cfg.tune_dims_per_block:
        for leaves in leaves_candidates(n, cfg):
            params = IndexParams(kind=TREE_AH, num_leaves=leaves, num_leaves_to_search=max(1, leaves // 10),
                                 training_sample_size=sample, reorder_k=max(reorders),
                                 dims_per_block=dpb)
            t = time.perf_counter()
            searcher = build_with_params(db, params, k=build_k, similarity=similarity)
            build_seconds[f"tree_ah/leaves={leaves}/dpb={dpb}"] = round(time.perf_counter() - t, 3)
            built[(leaves, dpb)] = searcher
            say(f"built num_leaves={leaves} dims_per_block={dpb} in {time.perf_counter() - t:.1f}s")
            for reorder in reorders:
                history: list[float] = []
                for to_search in leaves_ladder(leaves):
                    rec, qb, qs = _measure_point(searcher, queries, recall_of, k, to_search, reorder, repeats,
                                                 single_queries, timing_seconds)
                    point = TuningPoint(TREE_AH, leaves, dpb, to_search, reorder, rec, qb, qs, rec >= target)
                    points.append(point)
                    say(f"  leaves {leaves} dpb {dpb} search {to_search} reorder {reorder}: "
                        f"recall {rec:.4f}, {qb:.0f} q/s batched, {qs:.0f} q/s single")
                    if point.meets_target:
                        break  # more leaves only cost time at this reorder_k
                    history.append(rec)
                    if (len(history) > PLATEAU_STEPS
                            and history[-1] - history[-1 - PLATEAU_STEPS] < PLATEAU_GAIN):
                        break  # recall has plateaued: reorder_k is the limit, not the leaves

    if include_brute_force:
        built[(None, None)] = _brute_force_point()[1]

    # Confirmation pass: a neighbour job can only make a timing slower, never faster, so a
    # candidate that was unlucky the first time gets a second chance; the better run counts.
    for p in points:
        if p.meets_target:
            kwargs = {"final_num_neighbors": k}
            if p.kind == TREE_AH:
                kwargs.update(leaves_to_search=p.num_leaves_to_search, pre_reorder_num_neighbors=p.reorder_k)
            searcher = built[(p.num_leaves, p.dims_per_block)]
            again = len(queries) / _timed(lambda: searcher.search_batched(queries, **kwargs), repeats,
                                          timing_seconds)
            p.qps_batched = round(max(p.qps_batched, again), 1)

    meeting = [p for p in points if p.meets_target]
    if meeting:
        chosen_point = max(meeting, key=lambda p: p.qps_batched)
        met = True
        reason = (f"fastest of {len(meeting)} configurations meeting recall@10 >= "
                  f"{target} (of {len(points)} tried)")
    else:
        chosen_point = max(points, key=lambda p: (p.recall_at_10, p.qps_batched))
        met = False
        reason = (f"no configuration reached recall@10 >= {target} (best {chosen_point.recall_at_10:.4f} of "
                  f"{len(points)} tried); fell back to the highest-recall configuration")
    searcher = built[(chosen_point.num_leaves, chosen_point.dims_per_block)]
    built.clear()
    if chosen_point.kind == BRUTE_FORCE:
        chosen = IndexParams(kind=BRUTE_FORCE)
    else:
        chosen = IndexParams(kind=TREE_AH, num_leaves=chosen_point.num_leaves,
                             num_leaves_to_search=chosen_point.num_leaves_to_search,
                             training_sample_size=sample, reorder_k=chosen_point.reorder_k,
                             dims_per_block=chosen_point.dims_per_block)
        searcher = with_search_defaults(searcher, chosen.num_leaves_to_search, chosen.reorder_k)
    say(f"chosen: {chosen.to_dict()} ({reason})")
    return TuningResult(n, d, len(queries), target, met, reason, chosen, chosen_point, points, numpy_qps,
                        build_seconds, time.perf_counter() - start, searcher, definition)


# ---------------------------------------------------------------- artifacts
def markdown_table(result: TuningResult) -> str:
    """The curve as a Markdown table, chosen row marked."""
    rows = ["| kind | num_leaves | dims/block | leaves searched | reorder_k | recall@10 | q/s batched | "
            "q/s single | meets target |", "|---|---|---|---|---|---|---|---|---|"]
    c = result.chosen_point
    for p in result.points:
        mark = " **(chosen)**" if p is c else ""
        rows.append(f"| {p.kind}{mark} | {p.num_leaves or '-'} | {p.dims_per_block or '-'} | "
                    f"{p.num_leaves_to_search or '-'} | {p.reorder_k or '-'} | {p.recall_at_10:.4f} | "
                    f"{p.qps_batched:.0f} | {p.qps_single:.0f} | {'yes' if p.meets_target else 'no'} |")
    return "\n".join(rows) + "\n"


def svg_plot(result: TuningResult, width: int = 720, height: int = 440) -> str:
    """The tuning curve of ``result`` as SVG (see :func:`tuning_chart`)."""
    return tuning_chart(result.to_dict(), width=width, height=height)


def tuning_chart(doc: dict, width: int = 720, height: int = 440) -> str:
    """Recall@10 vs exact (x, fraction) against batched queries/s (y, log10 axis) as SVG.

    One line per built index and re-scoring pool (num_leaves, dims/block, reorder_k), its
    points the leaves-searched ladder; ScaNN's exact searcher is one more point. The recall
    target is a dashed line and the chosen configuration is ringed.

    Args:
        doc: ``tuning.json``'s content (``TuningResult.to_dict()``): reads ``points``,
            ``target_recall`` and ``chosen_point``. The dict form (not a TuningResult) lets
            the stage reports redraw the curve from the artifact alone.
    """
    points = list(doc.get("points") or [])
    target = doc.get("target_recall")
    recalls = [p["recall_at_10"] for p in points] + ([target] if target is not None else [])
    xmin = (min(recalls) - 0.01) if recalls else 0.0
    series: dict[tuple, list[dict]] = {}
    for p in points:
        series.setdefault((p["kind"], p.get("num_leaves"), p.get("dims_per_block"), p.get("reorder_k")),
                          []).append(p)
    lines = [Series(name="exact (ScaNN brute force)" if key[0] == BRUTE_FORCE else
                    f"leaves {key[1]}, dpb {key[2]}, reorder {key[3]}",
                    points=[(p["recall_at_10"], p["qps_batched"]) for p in group])
             for key, group in series.items()]
    chosen = doc.get("chosen_point")
    marks = [Mark(chosen["recall_at_10"], chosen["qps_batched"], "chosen")] if chosen else []
    vlines = [VLine(target, f"target {target}")] if target is not None else []
    return line_chart(lines, title="ScaNN tuning: recall vs speed", x_label="recall@10 vs exact (fraction)",
                      y_label="queries/s batched (log scale)", width=width, height=height, log_y=True,
                      x_range=(xmin, 1.0), marks=marks, vlines=vlines)


def write_artifacts(result: TuningResult, folder: str) -> list[str]:
    """Write ``tuning.json``, ``tuning.md`` and ``tuning.svg`` into a local folder; returns the paths."""
    import os

    os.makedirs(folder, exist_ok=True)
    from core.contracts import files as names

    paths = [os.path.join(folder, name) for name in (names.TUNING_FILE, names.TUNING_MARKDOWN_FILE,
                                                       names.TUNING_SVG_FILE)]
    with open(paths[0], "w", encoding="utf-8") as fh:
        json.dump(result.to_dict(), fh, indent=2, sort_keys=True)
    with open(paths[1], "w", encoding="utf-8") as fh:
        fh.write(f"# ScaNN tuning: {result.n_items} items x {result.dims} dims, {result.n_queries} queries\n\n"
                 f"Target recall@10 {result.target_recall}: {result.reason}.\n\n{markdown_table(result)}")
    with open(paths[2], "w", encoding="utf-8") as fh:
        fh.write(svg_plot(result))
    return paths
