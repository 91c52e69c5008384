"""core.contracts: the stage file names defined once, and the typed stage documents.

- Every typed model round-trips the JSON its producer writes today, byte for byte (the
  documents come from the producers themselves: evaluate's metrics.json from a tiny evaluation,
  summary.json from build_summary, stage.json from run_stage, manifest.json from a publish).
- A malformed document fails with the file and the dotted field named.
- No production module retypes a contract file name (the guard at the bottom).
"""

from __future__ import annotations

import ast
import json
import os
import re
from types import SimpleNamespace

import pytest

from core import storage
from core.contracts import files as names
from core.contracts.records import (ContractError, EvalMetrics, RunSummary, StageRecord, VersionManifest,
                                    read_manifest, read_metrics, read_stage_record, read_summary,
                                    write_manifest, write_metrics, write_stage_record, write_summary)
from tests.conftest import REPO



# -- names ------------------------------------------------------------------------------------


def test_path_helpers():
    assert names.vocab_file("item_id") == "vocab/item_id.tsv"
    assert names.split_pattern("train") == "train-*.tfrecord"
    assert names.split_pattern(names.ITEMS_SPLIT) == "items-*.tfrecord"
    assert names.table_file(names.USERS_TABLE) == "users.parquet"
    assert names.heldout_tower_dir("query") == "heldout/query_tower"
    assert names.run_record_file("r1") == "runs/r1.json"
    assert names.VERSION_ITEM_IDS_FILE == "index/item_ids.txt"
    assert names.SPLITS == ("train", "valid", "test")
    assert names.RECORD_SPLITS == ("train", "valid", "test", "train_negatives", "items")
    with pytest.raises(ValueError, match="unknown split 'nope'"):
        names.split_pattern("nope")


def test_stage_modules_use_the_contract_names():
    """The names stage modules have always exported are the contract's (one definition)."""
    from core import store, summary
    from features import ingest, transform
    from indexer import build, embeddings
    from publishing import publish
    from serving import retriever
    from trainer import artifacts

    assert (transform.SPLITS, transform.NEGATIVES) == (names.SPLITS, names.NEGATIVES_SPLIT)
    assert artifacts.SPLITS == names.RECORD_SPLITS  # the trainer reads every family the transform writes
    assert transform.STATS_FILE == names.TRANSFORM_STATS_FILE and transform.vocab_path("x") == names.vocab_file("x")
    assert (ingest.STATS_FILE, ingest.DEAD_LETTER_FILE) == (names.INGEST_STATS_FILE, names.DEAD_LETTER_FILE)
    assert (build.METRICS, build.ITEM_IDS, embeddings.FILENAME) == (names.INDEX_METRICS_FILE, names.ITEM_IDS_FILE,
                                                                     names.ITEM_EMBEDDINGS_FILE)
    # publish writes the version layout serving reads.
    assert (publish.QUERY_TOWER, publish.ITEMS, publish.SEEN) == (retriever.QUERY_TOWER, retriever.ITEMS,
                                                                  retriever.SEEN)
    assert f"{publish.INDEX}/{build.SCANN_DIR}" == retriever.SCANN_DIR
    assert f"{publish.INDEX}/{build.ITEM_IDS}" == retriever.ITEM_IDS
    assert (store.MANIFEST, summary.SUMMARY_FILE, summary.STAGE_FILE) == (names.MANIFEST_FILE, names.SUMMARY_FILE,
                                                                          names.STAGE_FILE)


# -- producers' documents round-trip ----------------------------------------------------------


def _roundtrip(model, write, read, doc, path: str, legacy_text: str) -> None:
    """``write`` produces exactly ``legacy_text`` (what the producer wrote before the models) and
    ``read`` gives back the same document."""
    record = write(path, doc)
    assert isinstance(record, model)
    assert storage.read_text(path) == legacy_text
    again = read(path)
    assert again.to_dict() == doc
    assert list(again.to_dict()) == list(json.loads(legacy_text))  # key order as on disk
    write(path, again)  # writing what was read writes the same bytes
    assert storage.read_text(path) == legacy_text


def _metrics_doc() -> dict:
    """A metrics.json exactly as evaluation.evaluate.evaluate_model builds it (live and slices included)."""
    from evaluation.evaluate import INTERVAL_METHOD

    return {"recall_at_10": 0.5, "recall_at_50": 0.75, "ndcg_at_10": 0.31, "ci95": {"recall_at_10": [0.4, 0.6]},
            "popularity": {"recall_at_10": 0.25, "ndcg_at_10": 0.1, "ci95": {"recall_at_10": [0.2, 0.3]},
                           "diff": {"recall_at_10": {"mean": 0.25, "ci95": [0.1, 0.4]}}},
            "sampled": True, "n_queries": 20, "n_queries_total": 50, "n_items": 40, "n_pairs": 22,
            "sampling": {"max_queries": 20, "seed": 0, "interval": INTERVAL_METHOD},
            "protocol": {"per": "query", "mask_seen": True, "split": "hashed"},
            "slices": {"head": {"recall_at_10": 0.6, "popularity_recall_at_10": 0.5, "n": 10},
                       "cold": {"recall_at_10": None, "popularity_recall_at_10": None, "n": 0,
                                "chance_recall_at_10": 0.25}},
            "live": {"version": "v1", "recall_at_10": 0.45, "ci95": {"recall_at_10": [0.3, 0.5]},
                     "diff": {"recall_at_10": {"mean": 0.05, "ci95": [-0.01, 0.1]}}, "n_items_missing": 2}}


def test_metrics_roundtrip(tmp_path):
    doc = _metrics_doc()
    _roundtrip(EvalMetrics, write_metrics, read_metrics, doc, str(tmp_path / names.METRICS_FILE),
               json.dumps(doc, indent=2))
    m = read_metrics(str(tmp_path / names.METRICS_FILE))
    assert m.metric("recall_at_10") == 0.5 and m.popularity.metric("recall_at_10") == 0.25
    assert m.live.version == "v1" and m.live.diff["recall_at_10"].mean == 0.05
    assert m.slices["cold"].n == 0 and m.protocol.mask_seen is True


@pytest.mark.parametrize("live", [None, {"version": "v1", "error": "IntegrityError: damaged"}, "absent"])
def test_metrics_live_variants(tmp_path, live):
    doc = _metrics_doc()
    if live == "absent":
        del doc["live"]
    else:
        doc["live"] = live
    path = str(tmp_path / names.METRICS_FILE)
    _roundtrip(EvalMetrics, write_metrics, read_metrics, doc, path, json.dumps(doc, indent=2))
    assert ("live" in read_metrics(path).to_dict()) == (live != "absent")


@pytest.mark.slow
def test_metrics_from_the_evaluate_stage(tmp_path):
    """evaluate_model's own metrics.json (tiny towers, test_evaluate's folder) reads back as written;
    the stage takes the transform output as a TransformedData handle too."""
    pytest.importorskip("tensorflow")
    from tests.support.evaluation import write_eval_folder
    from tests.support.indexer_models import make_config, write_models
    from trainer.artifacts import TransformedData
    from evaluation.evaluate import evaluate_model

    config = make_config(tmp_path, evaluate={"ks": [5, 10], "ndcg_k": 10, "slices": True})
    folder = str(tmp_path / "transformed")
    write_eval_folder(config, folder)
    got = evaluate_model(config, TransformedData(folder), write_models(str(tmp_path / "models")),
                         str(tmp_path / "eval"))
    path = str(tmp_path / "eval" / names.METRICS_FILE)
    text = storage.read_text(path)
    assert text == json.dumps(got, indent=2)  # the format metrics.json always had
    record = read_metrics(path)
    assert record.to_dict() == got and list(record.to_dict()) == list(got)
    assert record.n_queries > 0 and record.metric("recall_at_10") == got["recall_at_10"]
    assert set(record.slices) == {"head", "torso", "tail", "cold"}


def test_stage_record_roundtrip(tmp_path):
    """stage.json as components.runtime.run_stage writes it (the producer itself runs here)."""
    from components.runtime import read_stage_record as runtime_read
    from components.runtime import run_stage

    artifact = SimpleNamespace(path=str(tmp_path / "out"), metadata={})
    run_stage("transform", None, artifact, None, lambda cfg, out: {"rows": 3, "counts": {"train": 2}})
    path = os.path.join(artifact.path, names.STAGE_FILE)
    text = storage.read_text(path)
    record = read_stage_record(path)
    assert record.stage == "transform" and record.result == {"rows": 3, "counts": {"train": 2}}
    assert record.cpu_seconds is not None and record.peak_rss_mb is not None
    assert text == json.dumps(record.to_dict(), indent=2, sort_keys=True, default=str)
    _roundtrip(StageRecord, write_stage_record, read_stage_record, record.to_dict(), path, text)
    assert runtime_read(artifact.path) == record.to_dict()


def test_stage_error_written_by_run_stage(tmp_path):
    from components.runtime import run_stage

    artifact = SimpleNamespace(path=str(tmp_path / "out"), metadata={})

    def fails(cfg, out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage("train", None, artifact, None, fails)
    doc = json.loads(storage.read_text(os.path.join(artifact.path, names.STAGE_ERROR_FILE)))
    assert list(doc) == ["stage", "error", "seconds"] and doc["error"] == "RuntimeError: boom"


def _summary_doc() -> dict:
    from core.summary import build_summary, stage_record

    stages = [stage_record("evaluate", 1.5, {"recall_at_10": 0.5}, {"cpu_seconds": 1.0, "peak_rss_mb": 100.0}),
              stage_record("publish", 0.5, {"published": True})]
    index_metrics = {"kind": "brute_force", "n_items": 40, "recall_at_10_vs_exact": 1.0, "qps_batched": 1e4,
                     "qps_single": 900.0, "params": {"reorder_k": 100}}
    return build_summary("r1", stages, _metrics_doc(), index_metrics,
                         {"published": True, "version": "v1", "reasons": ["ok"], "store": "s", "baseline": None})


def test_summary_roundtrip(tmp_path):
    from core.summary import dumps

    doc = _summary_doc()
    path = str(tmp_path / names.SUMMARY_FILE)
    _roundtrip(RunSummary, write_summary, read_summary, doc, path, dumps(doc))
    summary = read_summary(path)
    assert summary.published and summary.index.kind == "brute_force"
    assert summary.stage_seconds == {"evaluate": 1.5, "publish": 0.5}
    # The local runner adds run_dir: an open key, kept.
    doc["run_dir"] = "runs/r1"
    _roundtrip(RunSummary, write_summary, read_summary, doc, path, dumps(doc))


def _publish_one(tmp_path) -> tuple[str, str]:
    from core.store import VersionStore

    staging = tmp_path / "staging"
    (staging / "index").mkdir(parents=True)
    (staging / "index" / names.ITEM_IDS_FILE).write_text("a\nb\n")
    (staging / names.SEEN_FILE).write_text("{}\n")
    store = VersionStore(str(tmp_path / "store"))
    serving = {"query_key": "user_id", "query_key_type": "id",
               "query_features": [{"name": "user_id", "type": "id"}], "defaults": {"user_id": ""},
               "display_fields": ["title"], "index_kind": "brute_force", "reorder_k": None, "embedding_dims": 8}
    store.publish("v1", str(staging), {"run_id": "r1", "metrics": _metrics_doc(), "index": {"kind": "brute_force"},
                                       "gate": {"publish": True, "reasons": [], "baseline": None},
                                       "lineage": {"run_id": "r1"},
                                       "published_weights": {"mode": "none", "splits": ["train"]},
                                       "serving": serving})
    return store.root, os.path.join(store.version_path("v1"), names.MANIFEST_FILE)


def test_manifest_roundtrip(tmp_path):
    root, path = _publish_one(tmp_path)
    text = storage.read_text(path)
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=2, sort_keys=True)
    _roundtrip(VersionManifest, write_manifest, read_manifest, doc, path, text)
    record = read_manifest(path)
    assert record.version == "v1" and set(record.files) == {"index/item_ids.txt", names.SEEN_FILE}
    assert record.serving.query_key == "user_id" and record.published_weights.splits == ["train"]
    from core.store import VersionStore

    assert VersionStore(root).manifest_record("v1").to_dict() == doc == VersionStore(root).read_manifest("v1")


# -- malformed documents ----------------------------------------------------------------------


def test_malformed_metrics_names_file_and_field(tmp_path):
    doc = _metrics_doc()
    doc["popularity"]["recall_at_10"] = "high"
    doc["n_items"] = "forty"
    path = str(tmp_path / names.METRICS_FILE)
    storage.write_text(path, json.dumps(doc))
    with pytest.raises(ContractError) as exc:
        read_metrics(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ")
    assert "popularity.recall_at_10: must be a number" in message and "n_items:" in message


def test_missing_field_is_named(tmp_path):
    doc = _metrics_doc()
    del doc["protocol"]
    path = str(tmp_path / names.METRICS_FILE)
    storage.write_text(path, json.dumps(doc))
    with pytest.raises(ContractError, match=rf"{re.escape(path)}: protocol: missing"):
        read_metrics(path)


def test_writer_refuses_a_bad_document(tmp_path):
    path = str(tmp_path / names.SUMMARY_FILE)
    doc = _summary_doc()
    doc["stage_seconds"] = {"train": "slow"}
    with pytest.raises(ContractError, match=r"summary.json: stage_seconds.train: "):
        write_summary(path, doc)
    assert not os.path.exists(path)  # nothing half-valid is left for a reader


def test_invalid_json_and_non_object(tmp_path):
    path = str(tmp_path / names.STAGE_FILE)
    storage.write_text(path, "{not json")
    with pytest.raises(ContractError, match=rf"{re.escape(path)}: not valid JSON"):
        read_stage_record(path)
    storage.write_text(path, "[1, 2]")
    with pytest.raises(ContractError, match=rf"{re.escape(path)}: expected a JSON object, got list"):
        read_stage_record(path)


def test_bad_manifest_field_is_an_integrity_error(tmp_path):
    from core.store import IntegrityError, VersionStore

    root, path = _publish_one(tmp_path)
    doc = json.loads(storage.read_text(path))
    doc["serving"]["display_fields"] = "title"
    storage.write_text(path, json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"version v1: file manifest.json: serving.display_fields: "):
        VersionStore(root).read_manifest("v1")


def test_publish_refuses_a_bad_manifest_before_uploading(tmp_path):
    from core.store import VersionStore

    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "a.txt").write_text("a")
    store = VersionStore(str(tmp_path / "store"))
    with pytest.raises(ContractError, match=r"publish v1: manifest.json: published_weights.splits: "):
        store.publish("v1", str(staging), {"published_weights": {"mode": "none", "splits": "train"}})
    assert not store.exists("v1")


# -- the transform output handle ---------------------------------------------------------------


def test_transformed_data_handle(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    from trainer import artifacts

    root = tmp_path / "transformed"
    (root / names.VOCAB_DIR).mkdir(parents=True)
    (root / names.vocab_file("item_id")).write_text("b\t3\na\t1\n")
    (root / names.TRANSFORM_STATS_FILE).write_text(json.dumps({"numeric": {"price": {"mean": 2.0, "std": 0.0}},
                                                               "counts": {"train": 4}, "split": "hashed"}))
    (root / names.SEEN_FILE).write_text(json.dumps({"key": "u1", "train": ["a"], "test": ["b"]}) + "\n")
    for name in ("train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord", "items-00000-of-00001.tfrecord"):
        (root / name).write_bytes(b"")
    data = artifacts.TransformedData(str(root))
    assert data.vocab("item_id") == (["b", "a"], [3, 1])
    assert data.split_method == "hashed" and data.counts == {"train": 4}
    assert data.numeric_stats("price") == (2.0, 1.0)
    assert data.seen == {"u1": {"train": ["a"], "valid": [], "test": ["b"]}}
    assert [os.path.basename(p) for p in data.split_files("train")] == ["train-00000-of-00002.tfrecord",
                                                                        "train-00001-of-00002.tfrecord"]
    assert data.require_split_files(names.ITEMS_SPLIT)
    with pytest.raises(FileNotFoundError, match="no valid-\\*.tfrecord files"):
        data.require_split_files("valid")
    # Read once: the files can go, the handle still answers.
    (root / names.vocab_file("item_id")).unlink()
    assert data.vocab("item_id") == (["b", "a"], [3, 1])
    with pytest.raises(FileNotFoundError):
        artifacts.read_vocab(str(root), "item_id")  # the folder-string readers read afresh
    # The folder-string readers accept a handle too (and keep its cache).
    assert artifacts.read_vocab(data, "item_id") == (["b", "a"], [3, 1])
    assert artifacts.TransformedData.of(data) is data and f"{data}" == str(root)


# -- the guard: no contract name retyped in production code -----------------------------------

PRODUCTION = ("core", "features", "trainer", "evaluation", "indexer", "publishing", "run_records", "serving",
              "components", "pipelines", "reports", "ui")
#: (module, literal) pairs that stay, with why.
ALLOWED = {
    # Keras model names of the two towers (they name variables in checkpoints), not folders.
    ("trainer/features.py", "query_tower"), ("trainer/features.py", "item_tower"),
}


def _tokens() -> tuple[set[str], set[str]]:
    """(file names matched anywhere in a literal, folder / split names matched as whole path parts)."""
    files = {n for n in names.ALL_NAMES if "." in n and not n.startswith(".")}
    files |= {names.table_file(t) for t in names.TABLES}
    folders = {names.QUERY_TOWER_DIR, names.ITEM_TOWER_DIR, names.HELDOUT_DIR, names.VOCAB_DIR, names.SCANN_DIR,
               names.NEGATIVES_SPLIT, names.CURRENT_FILE}
    return files, folders


def _documentation(tree) -> set[int]:
    """ids of the string nodes that document rather than name a file: docstrings, and the
    ``description=`` of config fields (prose shown in --help and the config reference)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
        if isinstance(node, ast.keyword) and node.arg == "description":
            ids.update(id(n) for n in ast.walk(node.value))
    return ids


def retyped_names() -> list[tuple[str, int, str]]:
    """(module, line, literal) of every string literal outside core/contracts that spells a contract name."""
    files, folders = _tokens()
    file_re = re.compile(r"(?<![\w.*-])(" + "|".join(re.escape(f) for f in sorted(files, key=len, reverse=True))
                         + r")(?![\w-])")
    suffix_re = re.compile(re.escape(names.TFRECORD_SUFFIX) + "|" + re.escape(names.VOCAB_SUFFIX) + r"\b")
    found = []
    for package in PRODUCTION:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            if rel.startswith("core/contracts/"):
                continue
            tree = ast.parse(path.read_text(), rel)
            skip = _documentation(tree)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
                    continue
                text = node.value
                hits = set(file_re.findall(text)) | set(suffix_re.findall(text))
                hits |= {part for part in re.split(r"[/\\]", text) if part in folders and
                         (part == text or "/" in text or "\\" in text)}
                hits |= {text} if text in folders else set()
                for hit in sorted(hits):
                    if (rel, hit) not in ALLOWED:
                        found.append((rel, node.lineno, hit))
    return found


def test_no_contract_name_is_retyped_in_production_code():
    found = retyped_names()
    assert not found, ("contract file names retyped outside core/contracts (import them from "
                       "core.contracts.files instead):\n" + "\n".join(f"  {m}:{n}: {h!r}" for m, n, h in found))


def test_the_guard_finds_a_retyped_name(tmp_path, monkeypatch):
    """The guard is not vacuous: a module that spells metrics.json (or vocab/<f>.tsv) is caught."""
    fake = tmp_path / "ui"
    fake.mkdir()
    (fake / "bad.py").write_text('"""docstring: metrics.json is fine here."""\n'
                                 'PATH = "out/metrics.json"\nVOCAB = f"vocab/{1}.tsv"\nOK = "metrics.jsonx"\n')
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["PRODUCTION"]), "PRODUCTION", ("ui",))
    found = retyped_names()
    assert {(m, h) for m, _, h in found} == {("ui/bad.py", "metrics.json"), ("ui/bad.py", ".tsv"),
                                             ("ui/bad.py", "vocab")}
