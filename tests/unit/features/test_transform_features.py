"""features.transform.TransformFeatures, the transform without its I/O: raw rows in through
beam.Create, outputs checked with assert_that on a TestPipeline (the in-process FnApiRunner;
Beam's default DirectRunner would first look for the Prism binary, which is never downloaded)."""

from __future__ import annotations

import json
import math

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected by pytest
from apache_beam.testing.util import assert_that, equal_to

from core.config import Config
from core.contracts import files as names
from features.transform import SMALL_FILES, TransformFeatures
from tests.support.transform_data import INTERACTIONS, ITEMS, USER_SCHEMA, USERS


def _rows(frame) -> list[dict]:
    """DataFrame rows as ReadFromParquet yields them: a missing value is None, not NaN."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in frame.to_dict("records")]


def _outputs(p):
    config = Config.model_validate({"data": {"path": "unused"}, "schema": USER_SCHEMA, "publish": {"store": "s"}})
    tables = {"items": p | "Items" >> beam.Create(_rows(ITEMS)),
              "interactions": p | "Interactions" >> beam.Create(_rows(INTERACTIONS)),
              "users": p | "Users" >> beam.Create(_rows(USERS))}
    return tables | TransformFeatures(config, "leave_last_out")


def test_every_interaction_lands_in_its_split_and_every_item_is_encoded():
    """The hand-worked split of tests/support/transform_data.py: u1 -> train i4, i1, valid i2,
    test i3; u2, u4, u5 -> train; u6 -> train i3, valid i1, test i2 (tie broken by item id);
    the label-0 row -> train_negatives; the 5 catalog items -> items."""
    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = _outputs(p)
        want = {"train": 7, "valid": 2, "test": 2, names.NEGATIVES_SPLIT: 1, names.ITEMS_SPLIT: 5}
        assert set(out) == {*want, SMALL_FILES}
        for split, count in want.items():
            counted = out[split] | f"Count[{split}]" >> beam.combiners.Count.Globally()
            assert_that(counted, equal_to([count]), label=f"Check[{split}]")


def test_small_files_carry_the_cleaned_vocabularies_and_the_stats():
    def check(files):
        by_path = dict(files)
        assert {names.vocab_file("user_id"), names.vocab_file("gender"), names.SEEN_FILE, names.QUERY_TABLE_FILE,
                names.ITEMS_DISPLAY_FILE, names.COLD_ITEMS_FILE, names.TRANSFORM_STATS_FILE} <= set(by_path)
        # " F " was trimmed by the shared cleaning rules: one token, not two.
        genders = [line.split("\t")[0] for line in by_path[names.vocab_file("gender")].splitlines()]
        assert sorted(genders) == ["F", "M"], genders
        stats = json.loads(by_path[names.TRANSFORM_STATS_FILE])
        assert stats["counts"]["train"] == 7 and stats["counts"]["items"] == 5
        # The catalog's price mean over known prices fills i3: (10 + 20 + 40 + 30) / 4.
        assert stats["numeric"]["price"]["mean"] == 25.0

    with BeamTestPipeline(runner=FnApiRunner()) as p:
        out = _outputs(p)
        assert_that(out[SMALL_FILES] | beam.combiners.ToList(), lambda lists: check(lists[0]))
