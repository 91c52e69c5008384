"""Config: typed, validated at the boundary, errors name the field and the file."""

import pytest

from core.config import ConfigError, config_from_json, load_config, parse_override

SHOP = "configs/shop.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)


def test_shipped_configs_load():
    shop = load_config(SHOP)
    assert shop.schema.query_key == "query"
    assert [f.name for f in shop.schema.query_features] == ["query"]
    ml = load_config("configs/movielens.yaml")
    assert ml.schema.query_key == "user_id"
    assert [f.name for f in ml.schema.user_features] == ["age", "gender", "occupation"]
    ids = load_config("configs/movielens-ids.yaml")
    assert [f.name for f in ids.schema.query_features] == ["user_id"] and ids.schema.item_features == []
    assert ids.train.use_item_ids_as_features and ids.transform.split == ml.transform.split


def test_overrides_are_parsed_as_yaml_and_validated():
    cfg = load_config(SHOP, ["train.n_epochs=3", "train.lr=0.5", "train.hidden_dims=[64, 32]",
                             "data.path=/tmp/x"])
    assert cfg.train.n_epochs == 3 and isinstance(cfg.train.n_epochs, int)
    assert cfg.train.lr == 0.5
    assert cfg.train.hidden_dims == [64, 32]
    assert cfg.data.path == "/tmp/x"


@pytest.mark.parametrize("override, field", [
    ("train.n_epoch=3", "train.n_epoch: unknown field"),
    ("bogus.key=1", "bogus: unknown field"),
    ("train.lr=-1", "train.lr"),
    ("train.activation_fn=sigmoidish", "train.activation_fn"),
    ("train.batch_size=many", "train.batch_size"),
])
def test_invalid_field_is_named_with_the_file(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(SHOP, [override])
    assert field in str(err.value)
    assert SHOP in str(err.value)


def test_schema_rules():
    with pytest.raises(ConfigError, match="query_key 'nope' must also be declared"):
        load_config(SHOP, ["schema.query_key=nope"])
    with pytest.raises(ConfigError, match="declare item_id"):
        load_config(SHOP, ["schema.item_features=[{name: item_id, type: id}]"])
    with pytest.raises(ConfigError, match="unique across towers"):
        load_config(SHOP, ["schema.item_features=[{name: query, type: text}]"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_override_syntax():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=hello world") == ("a.b", "hello world")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("a.b")


def test_json_round_trip_is_exact():
    cfg = load_config(SHOP, ["train.lr=0.123"])
    assert config_from_json(cfg.to_json()) == cfg
    assert cfg.with_overrides({"publish.store": "gs://bucket/store"}).publish.store == "gs://bucket/store"
