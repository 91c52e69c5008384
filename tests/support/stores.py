"""Tiny published version stores built from the fixture towers of ``tests.support.indexer_models``."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from core.towers import Tower
from indexer.build import build_index_stage
from indexer.embeddings import write_embeddings
from publishing.publish import gate_and_publish
from tests.support.indexer_models import (GOOD_METRICS, build_tower, item_ids, make_config, write_models,
                                          write_transformed)


def publish_tiny_version(config, tmp, transformed, models) -> str:
    """Embed (directly with the tower; Beam is covered in test_indexer), index, publish."""
    ids = item_ids()
    tower = Tower(os.path.join(models, "item_tower"))
    write_embeddings(str(tmp / "emb"), ids, tower.embed({"item_id": ids, "title": [""] * len(ids),
                                                         "price": [0.0] * len(ids)}))
    build_index_stage(config, str(tmp / "emb"), str(tmp / "index"))
    out = gate_and_publish(config, transformed, models, str(tmp / "emb"), str(tmp / "index"), GOOD_METRICS,
                           run_id="r1", lineage={"run_id": "r1"})
    assert out["published"], out["reasons"]
    return out["version"]


@dataclass
class Built:
    """A published store plus what is needed to publish more versions into copies of it."""
    tmp: object
    store: str
    first_version: str
    transformed: str
    emb: str
    index: str
    query_models: dict = field(default_factory=dict)  # seed -> model folder holding query_tower/


def build_store(tmp, extra_query_seeds=()) -> Built:
    """One published version (query tower seed 7) + extra query towers for later versions."""
    config = make_config(tmp, publish={"keep_versions": 10})
    transformed = write_transformed(config, str(tmp / "transformed"))
    models = write_models(str(tmp / "model"))
    version = publish_tiny_version(config, tmp, transformed, models)
    built = Built(tmp, config.publish.store, version, transformed, str(tmp / "emb"), str(tmp / "index"),
                  {7: models})
    for seed in extra_query_seeds:
        folder = str(tmp / f"model-{seed}")
        build_tower(os.path.join(folder, "query_tower"), "query", seed=seed)
        built.query_models[seed] = folder
    return built


def copy_store(built: Built, dest) -> str:
    shutil.copytree(built.store, str(dest))
    return str(dest)


def publish_version(built: Built, store: str, seed: int) -> str:
    """Publish a new live version into ``store`` whose query tower is the one built with ``seed``."""
    config = make_config(built.tmp, publish={"store": store, "keep_versions": 10})
    out = gate_and_publish(config, built.transformed, built.query_models[seed], built.emb, built.index,
                           GOOD_METRICS, run_id=f"seed{seed}", lineage={"run_id": f"seed{seed}"})
    assert out["published"], out["reasons"]
    return out["version"]
