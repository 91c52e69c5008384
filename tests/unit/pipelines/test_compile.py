"""The compiled KFP IR YAML: golden file plus the properties a cluster run relies on.

Regenerate the golden file after an intended change with
``.venv/bin/python -m pytest tests/unit/pipelines/test_compile.py --update-golden``.
"""

import yaml

from core.config import load_config
from pipelines.compile import compile_pipeline
from tests.conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "shop_pipeline.yaml"
STAGES = ["ingest", "transform", "train", "evaluate", "embed", "index", "publish"]


def _compile(tmp_path, monkeypatch, *overrides):
    monkeypatch.chdir(REPO)
    config = load_config("shop", list(overrides))
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
    root_tasks = spec["root"]["dag"]["tasks"]
    # Every stage runs inside the exit handler's group; the exit task runs whatever happens.
    assert sorted(root_tasks) == ["exit-handler-1", "record-run-op"]
    exit_task = root_tasks["record-run-op"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["inputs"]["parameters"]["status"]["taskFinalStatus"]["producerTask"] == "exit-handler-1"
    assert exit_task["retryPolicy"]["maxRetryCount"] == 2
    tasks = spec["components"][root_tasks["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]
    assert sorted(tasks) == sorted(f"{s}-op" for s in STAGES)
    # every step runs the one component image
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"gcr.io/acme/twotower:1.2.3"}
    # publish has a side effect: never cached, retried with backoff
    publish = tasks["publish-op"]
    assert publish["cachingOptions"].get("enableCache", False) is False
    assert publish["retryPolicy"]["maxRetryCount"] == 2
    assert publish["retryPolicy"]["backoffDuration"] == "30s"
    # ingest reads the outside world and evaluate the live version: never cached either
    for name in ("ingest-op", "evaluate-op"):
        assert tasks[name]["cachingOptions"].get("enableCache", False) is False, name
    assert tasks["train-op"]["cachingOptions"]["enableCache"] is True
    # a scheduled run's partition comes from its schedule time
    schedule_time = tasks["ingest-op"]["inputs"]["parameters"]["schedule_time"]["runtimeValue"]["constant"]
    assert schedule_time == "{{$.pipeline_job_schedule_time_utc}}"
    # the typed parameters and their defaults come from the config
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config_json", "data_path", "store", "run_id", "data_date", "data_fingerprint"}
    assert params["data_path"]["defaultValue"] == config.data.path
    assert params["store"]["defaultValue"] == config.publish.store
    # every stage shows an HTML and a Markdown report in the pipeline UI
    for name in STAGES:
        outputs = spec["components"][tasks[f"{name}-op"]["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
        assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML", name
        assert outputs["report_markdown"]["artifactType"]["schemaTitle"] == "system.Markdown", name
    # the pipeline's dependency order
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["transform-op"] == {"ingest-op"}
    assert deps["index-op"] == {"embed-op"}
    assert {"evaluate-op", "index-op"} <= deps["publish-op"]


def test_a_warm_started_train_step_reads_the_store_and_is_never_cached(tmp_path, monkeypatch):
    _, text = _compile(tmp_path, monkeypatch, "train.warm_start=true")
    spec = yaml.safe_load(text)
    root_tasks = spec["root"]["dag"]["tasks"]
    tasks = spec["components"][root_tasks["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]
    train = tasks["train-op"]
    # The live version it starts from changes outside the artifact store.
    assert train["cachingOptions"].get("enableCache", False) is False
    assert train["inputs"]["parameters"]["store"]["componentInputParameter"] == "pipelinechannel--store"
