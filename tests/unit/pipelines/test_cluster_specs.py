"""Beyond one machine: what the compiled pipeline asks the cluster for, proven on the spec.

- ``train.vertex``: the train task is google-cloud-pipeline-components' custom-job conversion of
  the train component (machine, accelerator, replicas, image = pipeline.image);
- ``train.device=gpu``: the train task requests ``train.accelerator_type`` x ``accelerator_count``;
- ``transform.runner=DataflowRunner``: the Beam stages get the runner, project, region,
  temp_location and the worker image (pipeline.image), and hand Beam the artifacts' gs:// URIs;
- a multi-worker training job: only the chief replica writes the run's artifacts.

The default compile (none of these set) is tests/unit/pipelines/test_compile.py's golden file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from components.runtime import (beam_location, beam_stage_config, is_chief_replica, remote_beam_problems,
                                run_stage)
from core.config import ConfigError, config_from_json, load_config
from pipelines.compile import compile_pipeline
from pipelines.pipeline import cluster_problems, create_pipeline
from tests.conftest import REPO
from tests.fakes.kfp_api_server import check_pipeline_spec

IMAGE = "us-central1-docker.pkg.dev/acme/ml/twotower:1.2.3"
GCPC_IMAGE = "gcr.io/ml-pipeline/google-cloud-pipeline-components:2.22.0"
DATAFLOW = ["transform.runner=DataflowRunner",
            "transform.pipeline_options={project: acme, region: europe-west4, temp_location: gs://acme-tmp/beam}"]
VERTEX = ["train.vertex.enabled=true", "train.vertex.machine_type=g2-standard-24", "train.vertex.replica_count=3",
          "train.distribute=multi_worker", "train.device=gpu", "train.accelerator_type=NVIDIA_L4",
          "train.accelerator_count=2", "train.vertex.boot_disk_size_gb=200",
          "train.vertex.service_account=trainer@acme.iam.gserviceaccount.com"]


def _config(*overrides):
    return load_config("shop", [f"pipeline.image={IMAGE}", *overrides])


def _compile(tmp_path, *overrides) -> tuple:
    config = _config(*overrides)
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(config, str(out))
    spec = yaml.safe_load(out.read_text())
    check_pipeline_spec(spec)  # parses as a PipelineSpec, every reference resolves (as the servers check)
    return config, spec


def _stage_tasks(spec) -> dict:
    exit_group = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    return spec["components"][exit_group]["dag"]["tasks"]


def _component(spec, task_name) -> dict:
    return spec["components"][_stage_tasks(spec)[task_name]["componentRef"]["name"]]


def _executor(spec, task_name) -> dict:
    return spec["deploymentSpec"]["executors"][_component(spec, task_name)["executorLabel"]]


def _default_config_json(spec) -> dict:
    return json.loads(spec["root"]["inputDefinitions"]["parameters"]["config_json"]["defaultValue"])


# --------------------------------------------------------------------------- Vertex AI custom job


def test_vertex_training_is_a_custom_job_with_the_configured_cluster(tmp_path):
    config, spec = _compile(tmp_path, *VERTEX)
    executor = _executor(spec, "train-op")["container"]
    # The task runs gcpc's custom-job launcher, which creates the job and waits for it.
    assert executor["image"] == GCPC_IMAGE
    assert executor["command"][-1] == "google_cloud_pipeline_components.container.v1.custom_job.launcher"
    assert executor["args"][:2] == ["--type", "CustomJob"]
    assert "resources" not in executor  # the launcher itself needs no GPU: the job's machines carry it
    params = _component(spec, "train-op")["inputDefinitions"]["parameters"]
    pools = params["worker_pool_specs"]["defaultValue"]
    # One chief pool plus a pool of replica_count - 1 workers, all the same machine.
    assert [p["replica_count"] for p in pools] == [1, 2]
    for pool in pools:
        assert pool["machine_spec"] == {"machine_type": "g2-standard-24", "accelerator_type": "NVIDIA_L4",
                                        "accelerator_count": 2}
        assert pool["disk_spec"] == {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 200}
        container = pool["container_spec"]
        assert container["image_uri"] == IMAGE  # the one component image
        assert container["args"][-2:] == ["--function_to_execute", "train_op"]
        assert "def train_op(" in container["command"][-1]
    assert params["service_account"]["defaultValue"] == "trainer@acme.iam.gserviceaccount.com"
    assert params["display_name"]["defaultValue"] == f"{config.pipeline.name}-train"
    # Same inputs and outputs as the plain component: the rest of the pipeline is wired as before.
    tasks = _stage_tasks(spec)
    assert set(_component(spec, "train-op")["outputDefinitions"]["artifacts"]) >= {"model", "metrics", "report"}
    model_input = tasks["evaluate-op"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert model_input == {"outputArtifactKey": "model", "producerTask": "train-op"}
    assert tasks["train-op"]["inputs"]["parameters"]["config_json"] == {
        "componentInputParameter": "pipelinechannel--config_json"}
    others = {name: e["container"]["image"] for name, e in spec["deploymentSpec"]["executors"].items()
              if name != _component(spec, "train-op")["executorLabel"]}
    assert set(others.values()) == {IMAGE}


def test_vertex_training_without_gpu_asks_for_no_accelerator(tmp_path):
    _, spec = _compile(tmp_path, "train.vertex.enabled=true", "train.vertex.machine_type=n1-highmem-16")
    pools = _component(spec, "train-op")["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert len(pools) == 1 and pools[0]["replica_count"] == 1
    assert pools[0]["machine_spec"] == {"machine_type": "n1-highmem-16"}
    assert pools[0]["container_spec"]["image_uri"] == IMAGE


def test_vertex_defaults_attach_a_t4_to_an_n1_machine(tmp_path):
    _, spec = _compile(tmp_path, "train.vertex.enabled=true", "train.device=gpu")
    pools = _component(spec, "train-op")["inputDefinitions"]["parameters"]["worker_pool_specs"]["defaultValue"]
    assert pools[0]["machine_spec"] == {"machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4",
                                        "accelerator_count": 1}


def test_gcpc_is_imported_only_for_the_vertex_option():
    code = ("import sys; from core.config import load_config; from pipelines.pipeline import create_pipeline; "
            "create_pipeline(load_config('shop')); "
            "assert 'google_cloud_pipeline_components' not in sys.modules, 'gcpc imported'; "
            "create_pipeline(load_config('shop', ['train.vertex.enabled=true'])); "
            "assert 'google_cloud_pipeline_components' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# --------------------------------------------------------------------------- GPU on a pipeline task


def test_gpu_training_requests_the_accelerator_on_the_train_task(tmp_path):
    _, spec = _compile(tmp_path, "train.device=gpu")
    accelerator = _executor(spec, "train-op")["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "NVIDIA_TESLA_T4" and accelerator["resourceCount"] == "1"
    for name in _stage_tasks(spec):
        if name != "train-op":
            assert "resources" not in _executor(spec, name)["container"], name


def test_kubeflow_gpu_resource_name_and_count(tmp_path):
    _, spec = _compile(tmp_path, "train.device=gpu", "train.accelerator_type=nvidia.com/gpu",
                       "train.accelerator_count=4")
    accelerator = _executor(spec, "train-op")["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "4"


def test_no_accelerator_unless_train_device_is_gpu(tmp_path):
    _, spec = _compile(tmp_path, "train.accelerator_type=NVIDIA_L4")  # its own knob: no effect until gpu
    assert all("resources" not in e["container"] for e in spec["deploymentSpec"]["executors"].values())
    assert "sdk_container_image" not in _default_config_json(spec)["transform"]["pipeline_options"]


# --------------------------------------------------------------------------- Beam on Dataflow


def test_dataflow_spec_carries_runner_options_and_the_worker_image(tmp_path):
    _, spec = _compile(tmp_path, *DATAFLOW)
    transform = _default_config_json(spec)["transform"]
    assert transform["runner"] == "DataflowRunner"
    assert transform["pipeline_options"] == {"project": "acme", "region": "europe-west4",
                                             "temp_location": "gs://acme-tmp/beam", "sdk_container_image": IMAGE}
    tasks = _stage_tasks(spec)
    for name in ("transform-op", "embed-op"):
        # The stage reads the run's config parameter, whose default is the config above.
        assert tasks[name]["inputs"]["parameters"]["config_json"] == {
            "componentInputParameter": "pipelinechannel--config_json"}
        source = _executor(spec, name)["container"]["command"][-1]
        assert "beam_stage_config(load_stage_config(config_json))" in source, name
        assert _executor(spec, name)["container"]["image"] == IMAGE
    transform_source = _executor(spec, "transform-op")["container"]["command"][-1]
    assert "run_transform(cfg, beam_location(ingested, cfg), beam_location(transformed, cfg))" in transform_source
    embed_source = _executor(spec, "embed-op")["container"]["command"][-1]
    assert re.search(r"embed_items\(cfg, beam_location\(transformed, cfg\), beam_location\(model, cfg\),\s*"
                     r"beam_location\(embeddings, cfg\)\)", embed_source)


def test_a_worker_image_of_your_own_is_kept(tmp_path):
    other = "eu.gcr.io/acme/beam-workers:7"
    _, spec = _compile(tmp_path, *DATAFLOW, f"transform.pipeline_options.sdk_container_image={other}")
    assert _default_config_json(spec)["transform"]["pipeline_options"]["sdk_container_image"] == other


def test_submitted_config_gets_the_worker_image_in_the_component():
    # twotower submit passes config.to_json() itself (not the compiled default): the component
    # adds the worker image at run time the same way.
    config = config_from_json(_config(*DATAFLOW).to_json())
    assert "sdk_container_image" not in config.transform.pipeline_options
    assert beam_stage_config(config).transform.pipeline_options["sdk_container_image"] == IMAGE
    in_process = _config()
    assert beam_stage_config(in_process) is in_process


class FakeArtifact:
    """What KFP's executor hands a component: the artifact's URI and this container's path to it."""

    def __init__(self, uri: str, path: str):
        self.uri, self.path, self.metadata = uri, path, {}


def test_remote_beam_gets_gcs_uris_and_in_process_gets_the_mount_path():
    artifact = FakeArtifact("gs://acme-root/twotower/run-1/transform-op/transformed",
                            "/gcs/acme-root/twotower/run-1/transform-op/transformed")
    assert beam_location(artifact, _config(*DATAFLOW)) == "gs://acme-root/twotower/run-1/transform-op/transformed"
    assert beam_location(artifact, _config()) == artifact.path
    # A runner of your own (Flink, ...) on local artifacts keeps the path; Dataflow cannot reach one.
    local = FakeArtifact("/tmp/root/transformed", "/tmp/root/transformed")
    assert beam_location(local, _config("transform.runner=FlinkRunner")) == local.path
    with pytest.raises(ConfigError, match="gs:// pipeline root"):
        beam_location(local, _config(*DATAFLOW))


def test_the_options_reach_beam(monkeypatch):
    """make_pipeline (core/beam.py, shared by transform and embed) with the stage's config."""
    import apache_beam
    from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions, WorkerOptions

    from core.beam import make_pipeline

    built = {}
    monkeypatch.setattr(apache_beam, "Pipeline", lambda options, **kw: built.setdefault("options", options))
    make_pipeline(beam_stage_config(_config(*DATAFLOW)).transform, job_name="twotower-transform")
    options = built["options"]
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    cloud = options.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location, cloud.job_name) == (
        "acme", "europe-west4", "gs://acme-tmp/beam", "twotower-transform")
    assert options.view_as(WorkerOptions).sdk_container_image == IMAGE


@pytest.mark.parametrize("overrides, expected", [
    (["transform.runner=DataflowRunner"],
     ["transform.pipeline_options.project: required", "transform.pipeline_options.region: required",
      "transform.pipeline_options.temp_location: required"]),
    (["transform.runner=DataflowRunner",
      "transform.pipeline_options={project: p, region: r, temp_location: /tmp/beam}"],
     ["transform.pipeline_options.temp_location: '/tmp/beam' must be a gs:// prefix"]),
])
def test_dataflow_settings_are_checked_by_name(overrides, expected):
    problems = remote_beam_problems(_config(*overrides))
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), problem


def test_dataflow_needs_a_pullable_worker_image():
    config = load_config("shop", DATAFLOW)  # pipeline.image: the local twotower:0.1.0
    (problem,) = remote_beam_problems(config)
    assert problem.startswith("pipeline.image: 'twotower:0.1.0' names no registry")
    with pytest.raises(ConfigError, match="pipeline.image"):
        create_pipeline(config)


# --------------------------------------------------------------------------- what each run can honour


@pytest.mark.parametrize("overrides, local, field", [
    (["train.vertex.enabled=true"], True, "train.vertex.enabled"),
    (DATAFLOW, True, "transform.runner"),
    (["train.vertex.enabled=true", "train.vertex.replica_count=2"], False, "train.vertex.replica_count"),
    (["train.distribute=multi_worker"], False, "train.distribute"),
])
def test_settings_a_run_cannot_honour_are_refused_by_name(overrides, local, field):
    config = _config(*overrides)
    problems = cluster_problems(config, local)
    assert len(problems) == 1 and problems[0].startswith(f"{field}:"), problems
    with pytest.raises(ConfigError, match=re.escape(field)):
        create_pipeline(config, local=local)


def test_multi_worker_on_vertex_is_accepted():
    assert cluster_problems(_config(*VERTEX), local=False) == []
    assert cluster_problems(_config(*DATAFLOW), local=False) == []
    assert cluster_problems(_config("train.distribute=multi_worker"), local=True) == []  # TF_CONFIG is yours


# --------------------------------------------------------------------------- multi-worker replicas


def _tf_config(task_type, index, cluster=("chief", "worker")):
    return {"TF_CONFIG": json.dumps({"cluster": {name: [f"{name}-{i}:2222" for i in range(2)] for name in cluster},
                                     "task": {"type": task_type, "index": index}})}


@pytest.mark.parametrize("env, chief", [
    ({}, True),
    (_tf_config("chief", 0), True),
    (_tf_config("worker", 0), False),  # Vertex AI: workerpool0 is the chief, workerpool1 the workers
    (_tf_config("worker", 1), False),
    (_tf_config("worker", 0, cluster=("worker",)), True),  # no chief: worker 0 is (TensorFlow's rule)
    (_tf_config("worker", 1, cluster=("worker",)), False),
    (_tf_config("evaluator", 0), False),
])
def test_chief_replica_rule(env, chief):
    assert is_chief_replica(env) is chief


def test_the_component_and_the_trainer_agree_on_the_chief(monkeypatch):
    """trainer.strategy.is_chief (which decides where the trainer writes) reads the strategy's
    resolver; the component reads TF_CONFIG. They must name the same replica."""
    from types import SimpleNamespace

    from trainer.strategy import is_chief

    cases = [_tf_config(t, i, cluster=c) for t, i, c in [("chief", 0, ("chief", "worker")),
                                                         ("worker", 0, ("chief", "worker")),
                                                         ("worker", 1, ("chief", "worker")),
                                                         ("worker", 0, ("worker",)), ("worker", 1, ("worker",))]]
    for env in cases:
        monkeypatch.setenv("TF_CONFIG", env["TF_CONFIG"])
        task = json.loads(env["TF_CONFIG"])["task"]
        strategy = SimpleNamespace(cluster_resolver=SimpleNamespace(task_type=task["type"], task_id=task["index"]))
        assert is_chief(strategy) is is_chief_replica(), env


class FakeMetrics:
    def __init__(self):
        self.logged = {}

    def log_metric(self, key, value):
        self.logged[key] = value


def test_a_non_chief_replica_leaves_the_artifacts_to_the_chief(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config("worker", 0)["TF_CONFIG"])
    model = FakeArtifact("gs://root/train-op/model", str(tmp_path / "model"))
    report, markdown = FakeArtifact("", str(tmp_path / "report.html")), FakeArtifact("", str(tmp_path / "r.md"))
    seen = {}

    def body(cfg, out):
        seen["out"] = out
        return {"epochs": 2}

    metrics = FakeMetrics()
    run_stage("train", _config(), model, metrics, body, (report, markdown))
    assert seen["out"] != model.path
    assert not (tmp_path / "model").exists()  # nothing of the replica's in the chief's folder
    assert not (tmp_path / "report.html").exists()  # and no report
    assert metrics.logged["epochs"] == 2.0  # the same metadata the chief reports


# --------------------------------------------------------------------------- the image


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            package, sep, version = line.partition("==")
            assert sep, f"{name}: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", package.split("[")[0].lower())] = version
    return pins


def test_the_image_adds_beams_gcp_extra_and_boot_program_at_the_pinned_versions():
    base, image = _pins("requirements.txt"), _pins("requirements-image.txt")
    assert image["apache-beam"] == base["apache-beam"]
    assert "apache-beam[gcp]==" in (REPO / "requirements-image.txt").read_text()
    assert not {name for name in set(base) & set(image) if base[name] != image[name]}
    assert base["google-cloud-pipeline-components"] == "2.22.0"
    assert base["google-cloud-aiplatform"].startswith("1.165.")
    gpu = _pins("requirements-gpu.txt")
    assert gpu["tensorflow"] == base["tensorflow"]
    assert "tensorflow[and-cuda]==" in (REPO / "requirements-gpu.txt").read_text()
    assert not {name for name in set(base) & set(gpu) if base[name] != gpu[name]}
    docker = (REPO / "Dockerfile").read_text()
    assert re.search(r"pip install -r /tmp/build/requirements\.txt -r /tmp/build/requirements-image\.txt", docker)
    assert re.search(r'if \[ "\$ACCELERATOR" = gpu \]; then \S*pip install -r /tmp/build/requirements-gpu\.txt',
                     docker)
    python = re.search(r"^ARG BASE_IMAGE=python:(\d+\.\d+)", docker, re.M).group(1)
    # Dataflow's workers boot from Beam's SDK image of the same Beam and Python versions.
    assert f"ARG BEAM_BOOT_IMAGE=apache/beam_python{python}_sdk:{base['apache-beam']}" in docker
    assert "COPY --from=beam_boot /opt/apache/beam /opt/apache/beam" in docker
    entrypoint = (REPO / "components/image/entrypoint.sh").read_text()
    assert "/opt/apache/beam/boot" in entrypoint and 'ENTRYPOINT ["/usr/local/bin/twotower-entrypoint"]' in docker
