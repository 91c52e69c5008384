"""Config: typed, validated at the boundary, errors name the field and the file."""

import pytest

from core.config import ConfigError, config_from_json, load_config, parse_override

SHOP = "shop"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from tests.conftest import REPO

    monkeypatch.chdir(REPO)


def test_shipped_configs_load():
    shop = load_config(SHOP)
    assert shop.schema.query_key == "query"
    assert [f.name for f in shop.schema.query_features] == ["query"]
    ml = load_config("movielens")
    assert ml.schema.query_key == "user_id"
    assert [f.name for f in ml.schema.user_features] == ["age", "gender", "occupation"]
    ids = load_config("movielens-ids")
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
    assert "core/configs/shop.yaml" in str(err.value)  # the shipped file it came from


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


SHIPPED = ["movielens", "movielens-history", "movielens-ids", "shop", "shop-encoder", "shop-encoder-bce", "shop-encoder-softmax", "synth-interactions"]


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path, monkeypatch):
    from core.configs import shipped_config, shipped_names

    monkeypatch.chdir(tmp_path)
    assert shipped_names() == SHIPPED
    assert load_config("shop") == load_config("shop.yaml") == load_config(shipped_config("shop"))
    assert load_config("movielens-history").schema.query_key == "user_id"


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    from core.configs import shipped_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "shop.yaml").write_text(shipped_config("shop").read_text().replace("path: data/shop",
                                                                                  "path: elsewhere"))
    assert load_config("shop.yaml").data.path == "elsewhere"
    assert load_config("shop").data.path == "data/shop"  # no file called shop here: the shipped one


def test_a_missing_config_lists_the_shipped_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="config file not found: shopp") as err:
        load_config("shopp")
    assert f"shipped: {', '.join(SHIPPED)}" in str(err.value)
    # A path is what the user meant: it never quietly becomes the shipped file of that name.
    with pytest.raises(ConfigError, match="config file not found: configs/shop.yaml"):
        load_config("configs/shop.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "shop.yaml")


def test_override_syntax():
    assert parse_override("a.b=1") == ("a.b", 1)
    assert parse_override("a.b=hello world") == ("a.b", "hello world")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("a.b")


def test_json_round_trip_is_exact():
    cfg = load_config(SHOP, ["train.lr=0.123"])
    assert config_from_json(cfg.to_json()) == cfg
    assert cfg.with_overrides({"publish.store": "gs://bucket/store"}).publish.store == "gs://bucket/store"


# -- options that would do nothing in their combination are refused, naming the field -----------
@pytest.mark.parametrize("overrides, field", [
    (["train.hidden_dims=[]", "train.dropout=0.2"], "train.dropout: 0.2 has no effect with train.hidden_dims empty"),
    (["train.negative_sampling=popularity"], "train.negative_sampling: 'popularity' only applies with "
                                             "train.negative_samples_count > 0"),
    (["train.negative_samples_count=8", "train.negative_sampling_alpha=0.5"], "train.negative_sampling_alpha"),
    (["train.negative_sampling_alpha=0.5"], "train.negative_sampling_alpha"),
    (["train.warmup_steps=10"], "train.warmup_steps: 10 only applies with train.lr_schedule=warmup_cosine"),
    (["train.item_id_dropout=0.3"], "train.item_id_dropout"),  # shop.yaml: content only, no item ids
    (["schema.query_features=[{name: query, type: categorical}]",
      "schema.item_features=[{name: brand, type: categorical}]", "train.text_hash_buckets=64"],
     "train.text_hash_buckets: 64 only applies to text features"),
    (["train.batch_size=16", "train.hard_negatives=15"], "train.hard_negatives: 15 keeps every negative"),
    (["train.distribute=multi_worker", "train.device=cpu"], "train.device: 'cpu' is not applied"),
    (["data.partition_lag_days=2"], "data.partition_lag_days: 2 only applies with data.partitioned=true"),
    (["transform.split=leave_last_out", "transform.test_fraction=0.2"], "transform.test_fraction: 0.2"),
    (["transform.runner=DataflowRunner", "transform.direct_num_workers=2"], "transform.direct_num_workers"),
    (["index.num_leaves_to_search=4"], "index.num_leaves_to_search: only applies with index.tune=false"),
    (["index.reorder_k=50"], "index.reorder_k: 50 only applies with index.tune=false"),
    (["index.num_leaves=10", "index.tune_leaves_factors=[2.0]"], "index.tune_leaves_factors"),
    (["index.tune=false", "index.num_leaves=10", "index.num_leaves_to_search=20"],
     "index.num_leaves_to_search: 20 is more than the index.num_leaves=10"),
    (["gate.require_live_comparison=true", "gate.publish_when_live_unusable=true"],
     "gate.publish_when_live_unusable: true contradicts gate.require_live_comparison"),
    (["evaluate.ks=[5, 50]"], "evaluate.ks: ks must include 10"),
    (["evaluate.ndcg_k=0"], "evaluate.ndcg_k"),
])
def test_options_that_would_be_ignored_are_refused(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(SHOP, overrides)
    assert field in str(err.value) and SHOP in str(err.value)
    assert "Value error" not in str(err.value)  # our sentence, not pydantic's wrapper


@pytest.mark.parametrize("overrides", [
    ["train.hidden_dims=[]"],                                 # no dropout asked for: fine
    ["train.hidden_dims=[64]", "train.dropout=0.2"],
    ["train.optimizer=adam", "train.weight_decay=0.01"],      # applied to every optimizer
    ["train.optimizer=adagrad", "train.weight_decay=0.01"],
    ["train.negative_samples_count=8", "train.negative_sampling=popularity", "train.negative_sampling_alpha=0.5"],
    ["train.lr_schedule=warmup_cosine", "train.warmup_steps=10"],
    ["train.batch_size=16", "train.hard_negatives=14"],
    ["train.batch_size=16", "train.negative_samples_count=8", "train.hard_negatives=22"],
    ["data.partitioned=true", "data.partition_lag_days=2"],
    ["transform.split=hashed", "transform.test_fraction=0.2"],
    ["index.tune=false", "index.reorder_k=50", "index.num_leaves=10", "index.num_leaves_to_search=4"],
    ["index.tune=false", "index.tune_reorder_k=[50]"],        # the tuner's own knobs, left for later
    ["gate.publish_when_live_unusable=true"],
])
def test_options_in_a_combination_where_they_act_are_accepted(overrides):
    cfg = load_config(SHOP, overrides)
    assert config_from_json(cfg.to_json()) == cfg  # and the check survives the JSON every KFP step reads


def test_ignored_option_checks_are_value_based_so_json_round_trips_pass():
    """Every KFP step re-validates the config from JSON, where every field is "set": the checks
    compare values with defaults, so a default config never trips them."""
    from core.config import ignored_options

    cfg = load_config(SHOP)
    assert ignored_options(cfg) == []
    assert ignored_options(config_from_json(cfg.to_json())) == []
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        cfg.with_overrides({"train.warmup_steps": 5})
