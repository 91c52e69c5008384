"""The compiled KFP IR YAML: golden file plus the properties a cluster run relies on.

Regenerate the golden file after an intended change with
``.venv/bin/python -m pytest tests/unit/test_compile.py --update-golden``.
"""

import yaml

from core.config import load_config
from pipelines.compile import compile_pipeline
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "shop_pipeline.yaml"
STAGES = ["ingest", "transform", "train", "evaluate", "embed", "index", "publish"]


def _compile(tmp_path, monkeypatch, *overrides):
    monkeypatch.chdir(REPO)
    config = load_config("configs/shop.yaml", list(overrides))
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(config, str(out))
    return config, out.read_text()


def test_matches_golden(tmp_path, monkeypatch, request):
    _, text = _compile(tmp_path, monkeypatch)
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "compiled pipeline changed; review and run with --update-golden"


def test_structure_for_cluster_runs(tmp_path, monkeypatch):
    config, text = _compile(tmp_path, monkeypatch, "pipeline.image=gcr.io/acme/twotower:1.2.3")
    spec = yaml.safe_load(text)
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(f"{s}-op" for s in STAGES)
    # every step runs the one component image
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"gcr.io/acme/twotower:1.2.3"}
    # publish has a side effect: never cached, retried with backoff
    publish = tasks["publish-op"]
    assert publish["cachingOptions"].get("enableCache", False) is False
    assert publish["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["train-op"]["cachingOptions"]["enableCache"] is True
    # the typed parameters and their defaults come from the config
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config_json", "data_path", "store", "run_id"}
    assert params["data_path"]["defaultValue"] == config.data.path
    assert params["store"]["defaultValue"] == config.publish.store
    # the pipeline's dependency order
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["transform-op"] == {"ingest-op"}
    assert deps["index-op"] == {"embed-op"}
    assert {"evaluate-op", "index-op"} <= deps["publish-op"]
