"""How well a published shop version answers queries worded unlike any training query.

The synth-shop generator's ``paraphrases.csv`` (datagen/shop_paraphrases.py) holds queries that
share no content word with any training query, each with the catalogue category it asks for. A
version's answer is judged by the catalogue's own ``category`` column, so nothing here was seen in
training: category precision@k (the share of the k items in the asked-for category) and hit@1.
Used by bench/paraphrases.py and tests/integration/test_paraphrase_search.py.
"""

from __future__ import annotations

import time


def judge_paraphrases(store: str, items_csv: str, paraphrases, k: int = 10) -> dict:
    """Ask the store's live version every paraphrase (``Retriever.retrieve``, one call each after a
    warm-up call) and judge the answers.

    Args:
        store: a publish store with a live version.
        items_csv: the catalogue (``item_id``, ``category`` columns).
        paraphrases: a DataFrame of ``query``, ``category`` rows.
        k: items per answer.
    Returns:
        ``{"category_precision_at_10", "category_hit_at_1", "n_paraphrases", "p50_ms", "p99_ms"}``
        (the precision key names k = 10, the default; latencies are ms per request).
    """
    import numpy as np
    import pandas as pd

    from serving.retriever import Retriever

    category = dict(pd.read_csv(items_csv, usecols=["item_id", "category"]).itertuples(index=False))
    retriever = Retriever.load(store)
    retriever.retrieve({"query": "warm up"}, k=k)
    precision, hit, latencies = [], [], []
    for text, expected in paraphrases[["query", "category"]].itertuples(index=False):
        began = time.perf_counter()
        answer = retriever.retrieve({"query": text}, k=k)
        latencies.append((time.perf_counter() - began) * 1e3)
        cats = [category.get(item["item_id"]) for item in answer["items"]]
        precision.append(sum(c == expected for c in cats) / k)
        hit.append(float(bool(cats) and cats[0] == expected))
    return {"category_precision_at_10": round(float(np.mean(precision)), 4),
            "category_hit_at_1": round(float(np.mean(hit)), 4), "n_paraphrases": len(precision),
            "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3)}
