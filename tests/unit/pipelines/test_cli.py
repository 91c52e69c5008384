"""The twotower CLI: user errors are one clear line and exit code 2, not a traceback."""

import pytest
import yaml

from pipelines.cli import main
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def test_unknown_config_key_is_named(capsys):
    assert main(["run", "--set", "train.n_epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "train.n_epoch: unknown field" in err and "core/configs/shop.yaml" in err  # the shipped default


def test_missing_config_file(capsys, tmp_path):
    assert main(["compile", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "p.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_a_shipped_config_by_name_from_an_empty_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "--config", "movielens-ids", "--out", "p.yaml"]) == 0
    assert yaml.safe_load((tmp_path / "p.yaml").read_text())["pipelineInfo"]["name"] == "twotower"


def test_an_unknown_config_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", "shopp"]) == 2
    err = capsys.readouterr().err
    assert "config file not found: shopp" in err and "shipped: movielens, " in err and "shop" in err


def test_help_names_the_shipped_configs(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "movielens-history" in capsys.readouterr().out


def test_compile_writes_ir_yaml_with_the_configured_image(tmp_path, capsys):
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--set", "pipeline.image=registry.example/tt:9", "--out", str(out)]) == 0
    spec = yaml.safe_load(out.read_text())
    assert spec["pipelineInfo"]["name"] == "twotower"
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/tt:9"}


def test_movielens_needs_a_source(capsys, tmp_path):
    assert main(["data", "movielens", "--out", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err


def test_query_on_an_empty_store_says_so(capsys, tmp_path):
    assert main(["query", "--store", str(tmp_path), "--text", "shoes"]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_retrieve_rejects_malformed_jsonl(capsys, tmp_path):
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"query": "shoes"}\n{not json\n')
    assert main(["retrieve", "--store", str(tmp_path), "--queries", str(queries), "--out",
                 str(tmp_path / "r.jsonl")]) == 2
    assert "line 2" in capsys.readouterr().err
