"""The cascade's pre-ranker (``train.cascade``): an IntTower-style model (Li et al. 2022) trained by
the train stage after the retrieval towers, on the same train split, and exported beside them.

Model (each tower has its own encoders and tables, built like the retrieval towers'):

- Light-SE (feature importance): a tower's F field encodings e_f are summarised by their means
  z [B, F]; a = F * softmax(z W) weighs them, e_f' = e_f + a_f e_f (the residual keeps a field the
  block would mute trainable);
- an MLP (``cascade.hidden_dims``), then the query side emits ``heads`` unit vectors and the item
  side ``item_vectors`` unit vectors of ``head_dims`` each (flattened: the exported towers' output
  is [B, H * d] / [B, M * d]);
- the fine-grained early interaction, scale * sum_h max_m <q_h, i_m> + bias, plus (by default,
  ``use_retrieval_score``) a learned weight times the frozen retrieval model's score of the pair
  (core/prerank.py, the one definition evaluation and serving use);
- trained with ``cascade.loss`` (softmax: cross-entropy of the positive among its negatives; log:
  IntTower's sigmoid log loss): each positive (label 1) against ``hard_negatives`` items drawn from the
  retrieval model's own top ``top_n`` for the row's key (its train items excluded: what the
  pre-ranker re-scores at serving) and ``random_negatives`` of the batch's other positives
  (label 0), plus the contrastive interaction regulariser (CIR): in-batch InfoNCE between the
  mean query head and the mean item vector of the positive, same-item columns removed.

Validation (every epoch): the valid keys' retrieval top ``top_n`` (exact, train items masked),
re-ordered by the pre-ranker: recall@10 of that list vs of the retrieval order, on the same keys
the retrieval model validates on. Early stopping keeps the best epoch.

Written to ``<model>/prerank/``: ``query_tower/``, ``item_tower/`` (SavedModels, the serving
contract of :class:`core.towers.Tower`) and ``prerank.json`` (the interaction's shape, scale and
bias, top_n, the epoch history). Trainer-internal (imports TensorFlow at module import).
"""

from __future__ import annotations

import json
import time
from typing import Optional, Sequence

import numpy as np

from core import storage
from core.config import Config, FeatureSpec
from core.contracts import files as names
from core.metrics import query_contributions, estimates, ranks_from_lists, top_positions
from core.prerank import InteractionShape, rerank
from core.similarity import gathered_scores
from core.records import ITEM_KEY, interaction_specs
from core.sampling import sample_keys
from core.text import normalize_text
from trainer import artifacts
from trainer.data import read_columns
from trainer.features import build_encoder, item_input_specs, query_input_specs
from trainer.tfenv import import_tf

tf = import_tf()

#: Rows of the catalog the pre-ranker's item tower embeds per call during validation.
EMBED_BATCH = 4096


class LightSE(tf.keras.layers.Layer):
    """IntTower's Light-SE over F field encodings of any widths: [B, F_i] each -> the same, reweighted."""

    def __init__(self, n_fields: int, **kwargs):
        super().__init__(**kwargs)
        self.n_fields = int(n_fields)
        self.importance = tf.keras.layers.Dense(self.n_fields, name="importance")

    def call(self, fields: Sequence):
        summary = tf.stack([tf.reduce_mean(f, axis=1) for f in fields], axis=1)  # [B, F]
        weights = float(self.n_fields) * tf.nn.softmax(self.importance(summary), axis=1)
        return [f * (1.0 + weights[:, i:i + 1]) for i, f in enumerate(fields)]


class PreRankTower(tf.keras.Model):
    """Encoders -> Light-SE -> MLP -> ``n_vectors`` unit vectors of ``head_dims``, flattened [B, n * d].

    Has the retrieval towers' export surface (``input_specs``, ``projection``), so
    :func:`trainer.export.export_tower` / ``embed_columns`` take it as they are.
    """

    def __init__(self, encoders: dict, input_specs: Sequence[FeatureSpec], hidden_dims: Sequence[int],
                 activation: str, n_vectors: int, head_dims: int, **kwargs):
        super().__init__(**kwargs)
        self.input_specs = list(input_specs)
        self.encoded_names = sorted(encoders)
        self.encoders = {name: encoders[name] for name in self.encoded_names}
        self.light_se = LightSE(len(self.encoded_names), name="light_se")
        self.hidden = [tf.keras.layers.Dense(w, activation=activation, name=f"hidden_{i}")
                       for i, w in enumerate(hidden_dims)]
        self.n_vectors, self.head_dims = int(n_vectors), int(head_dims)
        self.projection = tf.keras.layers.Dense(self.n_vectors * self.head_dims, name="projection")

    @property
    def raw_input_names(self) -> list[str]:
        return [s.name for s in self.input_specs]

    def call(self, features, training=False):
        fields = self.light_se([self.encoders[name](features[name]) for name in self.encoded_names])
        x = tf.concat(fields, axis=1)
        for layer in self.hidden:
            x = layer(x)
        vectors = tf.reshape(self.projection(x), [-1, self.n_vectors, self.head_dims])
        vectors = tf.math.l2_normalize(vectors, axis=2)
        return tf.reshape(vectors, [-1, self.n_vectors * self.head_dims])


def interaction_logits(query, items, shape: InteractionShape, scale, bias):
    """TensorFlow twin of :func:`core.prerank.interaction_scores`: query [B, H * d], items
    [B, K, M * d] -> [B, K] logits (``scale`` / ``bias`` scalars, variables while training)."""
    heads = tf.reshape(query, [-1, shape.heads, shape.head_dims])
    vectors = tf.reshape(items, [tf.shape(items)[0], tf.shape(items)[1], shape.item_vectors, shape.head_dims])
    sims = tf.einsum("bhd,bkmd->bkhm", heads, vectors)
    return scale * tf.reduce_sum(tf.reduce_max(sims, axis=3), axis=2) + bias


def contrastive_loss(query, items, item_positions, shape: InteractionShape, temperature: float):
    """CIR: mean InfoNCE of each row's mean head against the batch's positives' mean item vectors
    (query [B, H * d], items [B, M * d], item_positions [B] int: equal = the same item, whose other
    copies are not negatives). Scalar."""
    u = tf.math.l2_normalize(tf.reduce_mean(tf.reshape(query, [-1, shape.heads, shape.head_dims]), axis=1), axis=1)
    v = tf.math.l2_normalize(tf.reduce_mean(tf.reshape(items, [-1, shape.item_vectors, shape.head_dims]), axis=1),
                             axis=1)
    logits = tf.matmul(u, v, transpose_b=True) / temperature
    same = tf.equal(item_positions[:, None], item_positions[None, :])
    diagonal = tf.eye(tf.shape(logits)[0], dtype=tf.bool)
    logits = tf.where(same & ~diagonal, tf.fill(tf.shape(logits), -1e9), logits)
    labels = tf.range(tf.shape(logits)[0])
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def build_prerank_towers(config: Config, transformed_dir) -> tuple[PreRankTower, PreRankTower]:
    """(query side, item side) with fresh encoders for the same features as the retrieval towers."""
    stats = artifacts.read_stats(transformed_dir)
    t, c = config.train, config.train.cascade
    q_specs = query_input_specs(config)
    i_specs = item_input_specs(config)
    i_encoded = i_specs if t.use_item_ids_as_features else i_specs[1:]
    item_encoders = {s.name: build_encoder(s, config, transformed_dir, stats) for s in i_encoded}
    query_encoders = {s.name: build_encoder(s, config, transformed_dir, stats, item_encoders.get(ITEM_KEY))
                      for s in q_specs}
    query = PreRankTower(query_encoders, q_specs, c.hidden_dims, t.activation_fn, c.heads, c.head_dims,
                         name="prerank_query_tower")
    item = PreRankTower(item_encoders, i_specs, c.hidden_dims, t.activation_fn, c.item_vectors, c.head_dims,
                        name="prerank_item_tower")
    return query, item


class _TrainRows:
    """The pre-ranker's training rows: query columns, each row's catalog position and key."""

    def __init__(self, config: Config, transformed_dir, catalog, seed: int):
        cols = read_columns(artifacts.split_files(transformed_dir, names.TRAIN), interaction_specs(config.schema))
        index = catalog.index
        positions = np.array([index.get(str(i), -1) for i in cols[ITEM_KEY]], dtype=np.int64)
        keep = np.flatnonzero(positions >= 0)
        limit = config.train.cascade.max_train_rows
        if limit and len(keep) > limit:
            keep = np.sort(np.random.default_rng(seed).choice(keep, size=limit, replace=False))
        self.n_total = int(len(positions))
        self.positions = positions[keep]
        self.keys = np.asarray([str(k) for k in cols[config.schema.query_key][keep]], dtype=object)
        self.features = {s.name: cols[s.name][keep] for s in config.schema.query_features}

    def __len__(self) -> int:
        return int(len(self.positions))


class _RetrievalEmbeddings:
    """The frozen retrieval towers' embeddings the pre-ranker trains against: the catalog's
    float32 [N_items, D] and, with ``use_retrieval_score``, every train row's query float32 [R, D]."""

    def __init__(self, config: Config, rows: _TrainRows, catalog, retrieval):
        from trainer.export import embed_columns

        (self.query_tower, item_tower), (self.query_serve, item_serve) = retrieval
        self.similarity = config.train.similarity
        self.items = embed_columns(item_serve, item_tower, catalog.features)
        self.rows = self.queries(rows.features) if config.train.cascade.use_retrieval_score else None

    def queries(self, features: dict) -> np.ndarray:
        """float32 [R, D]: the retrieval query tower on raw query columns."""
        from trainer.export import embed_columns

        return embed_columns(self.query_serve, self.query_tower, features)

    def row_scores(self, batch_rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """float32 [B, K]: train rows' retrieval scores of catalog positions [B, K] (zeros without rows)."""
        if self.rows is None:
            return np.zeros(positions.shape, dtype=np.float32)
        return gathered_scores(self.rows[batch_rows], self.items[positions], self.similarity).astype(np.float32)


def _mine(config: Config, transformed_dir, rows: _TrainRows, catalog, embedded: _RetrievalEmbeddings, seed: int
          ) -> tuple[dict[str, np.ndarray], float]:
    """({key: its retrieval top_n positions, its train items removed}, seconds) for a seeded sample of
    at most ``cascade.max_mining_keys`` keys (each embedded from its first training row)."""
    start = time.perf_counter()
    c = config.train.cascade
    first: dict[str, int] = {}
    for row, key in enumerate(rows.keys):
        first.setdefault(key, row)
    keys = sample_keys(list(first), c.max_mining_keys, seed)
    seen = artifacts.read_seen(transformed_dir)
    text_key = any(f.name == config.schema.query_key and f.type == "text" for f in config.schema.query_features)
    index = catalog.index

    def train_items(key: str) -> np.ndarray:
        entry = key if key in seen or not text_key else normalize_text(key)
        return np.array(sorted(index[i] for i in artifacts.seen_items(seen, entry, (names.TRAIN,)) if i in index),
                        dtype=np.int64)

    picked = np.array([first[k] for k in keys], dtype=np.int64)
    queries = (embedded.rows[picked] if embedded.rows is not None
               else embedded.queries({n: v[picked] for n, v in rows.features.items()}))
    masked = [train_items(k) for k in keys]
    top = top_positions(queries, embedded.items, masked, c.top_n, config.train.similarity)
    pools = {}
    for key, row, mask in zip(keys, top, masked):
        pool = row[~np.isin(row, mask)] if len(mask) else row
        if len(pool):
            pools[key] = pool
    return pools, time.perf_counter() - start


def _negatives(rng, batch_rows: np.ndarray, rows: _TrainRows, pools: dict, hard: int, random: int) -> np.ndarray:
    """int64 [B, hard + random] negative catalog positions of one batch: ``hard`` from each row's
    key's pool (rows without one take batch items instead), ``random`` of the batch's other items."""
    b = len(batch_rows)
    batch_items = rows.positions[batch_rows]
    out = np.empty((b, hard + random), dtype=np.int64)
    for j, row in enumerate(batch_rows):
        pool = pools.get(rows.keys[row])
        if hard:
            out[j, :hard] = (pool[rng.integers(0, len(pool), hard)] if pool is not None
                             else batch_items[rng.integers(0, b, hard)])
    if random:
        # Row j takes the items of rows j + s (s in 1..b-1): never its own row's positive.
        shifts = rng.integers(1, max(b, 2), size=(b, random))
        out[:, hard:] = batch_items[(np.arange(b)[:, None] + shifts) % b]
    return out


class _Validation:
    """The valid keys' fixed retrieval candidates, and recall@10 of them re-ordered by the pre-ranker."""

    def __init__(self, config: Config, valid, catalog, embedded: _RetrievalEmbeddings):
        self.valid = valid
        self.catalog = catalog
        if not len(valid):
            self.candidates = None
            return
        queries = embedded.queries(valid.features)
        self.candidates = top_positions(queries, embedded.items, valid.masked, config.train.cascade.top_n,
                                        config.train.similarity)
        self.scores = gathered_scores(queries, embedded.items[self.candidates], config.train.similarity)
        self.retrieval_recall = self.recall(self.candidates)

    def recall(self, lists: np.ndarray) -> float:
        ranks = ranks_from_lists(lists, self.valid.relevant, self.valid.masked, len(self.catalog.ids), 10)
        values, weights = query_contributions(ranks, (10,), 10, "query")
        return float(estimates(values, weights)["recall_at_10"])

    def cascade_recall(self, towers, serves, shape: InteractionShape) -> Optional[float]:
        if self.candidates is None:
            return None
        from trainer.export import embed_columns

        (query_tower, item_tower), (query_serve, item_serve) = towers, serves
        item_vectors = embed_columns(item_serve, item_tower, self.catalog.features, EMBED_BATCH)
        query_vectors = embed_columns(query_serve, query_tower, self.valid.features)
        lists, _ = rerank(query_vectors, item_vectors, self.candidates, shape, self.scores)
        return self.recall(lists)


def train_prerank(config: Config, transformed_dir, out_dir: str, catalog, valid, retrieval) -> dict:
    """Train and export the pre-ranker into ``<out_dir>/prerank/``; returns (and writes) ``prerank.json``.

    Args:
        catalog / valid: the train stage's :class:`trainer.evalset.Catalog` and valid
            :class:`trainer.evalset.QuerySet` (validation keys, train items masked).
        retrieval: ((query_tower, item_tower), (query_serve, item_serve)) of the trained
            (early-stopped) retrieval model, whose top-N the pre-ranker learns to re-order.
    """
    from trainer.export import export_tower, serving_function

    start = time.perf_counter()
    t, c = config.train, config.train.cascade
    seed = t.seed
    tf.random.set_seed(seed)
    rng = np.random.default_rng(seed)
    rows = _TrainRows(config, transformed_dir, catalog, seed)
    if not len(rows):
        raise ValueError(f"{transformed_dir}: no train row has a catalog item to train the pre-ranker on")
    embedded = _RetrievalEmbeddings(config, rows, catalog, retrieval)
    pools, mining_seconds = _mine(config, transformed_dir, rows, catalog, embedded, seed) if c.hard_negatives \
        else ({}, 0.0)
    validation = _Validation(config, valid, catalog, embedded)
    query_tower, item_tower = build_prerank_towers(config, transformed_dir)
    # With the retrieval score, training starts from the retrieval order (its logits' own scale)
    # and a small interaction term; without, the interaction alone carries the score.
    scale = tf.Variable((1.0 if c.use_retrieval_score else 5.0) / c.heads, name="prerank_scale")
    bias = tf.Variable(0.0, name="prerank_bias")
    retrieval_weight = tf.Variable(1.0 / t.temperature if c.use_retrieval_score else 0.0,
                                   trainable=c.use_retrieval_score, name="prerank_retrieval_weight")
    shape = InteractionShape(c.heads, c.item_vectors, c.head_dims)
    optimizer = tf.keras.optimizers.Adam(c.lr)
    query_columns = {name: tf.constant(values) for name, values in rows.features.items()}
    item_columns = {name: tf.constant(values) for name, values in catalog.features.items()}
    n_negatives = c.hard_negatives + c.random_negatives

    def row_loss(logits):
        """Mean over rows of logits [B, 1 + K] (column 0 the positive), ``cascade.loss``."""
        if c.loss == "softmax":
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.zeros(tf.shape(logits)[0], dtype=tf.int32), logits=logits))
        labels = tf.concat([tf.ones_like(logits[:, :1]), tf.zeros_like(logits[:, 1:])], axis=1)
        return tf.reduce_mean(tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits),
                                            axis=1))

    @tf.function(reduce_retracing=True)
    def step(batch_rows, positions, retrieval_scores):
        # positions [B, 1 + K]: column 0 the positive. The item tower runs once per distinct item.
        distinct, where = tf.unique(tf.reshape(positions, [-1]))
        with tf.GradientTape() as tape:
            query = query_tower({n: tf.gather(v, batch_rows) for n, v in query_columns.items()}, training=True)
            vectors = item_tower({n: tf.gather(v, distinct) for n, v in item_columns.items()}, training=True)
            items = tf.reshape(tf.gather(vectors, where), [tf.shape(positions)[0], 1 + n_negatives, -1])
            logits = interaction_logits(query, items, shape, scale, bias) + retrieval_weight * retrieval_scores
            loss = row_loss(logits)
            if c.contrastive_weight > 0.0:
                loss += c.contrastive_weight * contrastive_loss(query, items[:, 0], positions[:, 0], shape,
                                                                c.contrastive_temperature)
        variables = [*query_tower.trainable_variables, *item_tower.trainable_variables, scale, bias]
        if c.use_retrieval_score:
            variables.append(retrieval_weight)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    serves = (serving_function(query_tower), serving_function(item_tower))
    def current_shape() -> InteractionShape:
        return InteractionShape(c.heads, c.item_vectors, c.head_dims, float(scale.numpy()), float(bias.numpy()),
                                float(retrieval_weight.numpy()))

    history, best, best_value, best_weights, waited = [], 0, None, None, 0
    for epoch in range(1, c.epochs + 1):
        began = time.perf_counter()
        order = rng.permutation(len(rows))
        losses = []
        for s in range(0, len(order), c.batch_size):
            batch_rows = order[s:s + c.batch_size]
            if len(batch_rows) < 2:
                continue
            negatives = _negatives(rng, batch_rows, rows, pools, c.hard_negatives, c.random_negatives)
            positions = np.concatenate([rows.positions[batch_rows][:, None], negatives], axis=1)
            losses.append(float(step(tf.constant(batch_rows), tf.constant(positions),
                                     tf.constant(embedded.row_scores(batch_rows, positions)))))
        seconds = time.perf_counter() - began
        value = validation.cascade_recall((query_tower, item_tower), serves, current_shape())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)) if losses else None,
                        "val_cascade_recall_at_10": value, "seconds": round(seconds, 3)})
        print(f"[prerank] epoch {epoch}: loss={history[-1]['loss']:.4f} val cascade recall@10="
              f"{value if value is None else round(value, 4)} (retrieval alone "
              f"{getattr(validation, 'retrieval_recall', None)}) {seconds:.1f}s", flush=True)
        if value is None or best_value is None or value > best_value:
            best, best_value, waited = epoch, value, 0
            best_weights = ([v.numpy() for v in (*query_tower.variables, *item_tower.variables)], current_shape())
        else:
            waited += 1
            if waited > c.patience:
                break
    weights, shape = best_weights
    for variable, value in zip((*query_tower.variables, *item_tower.variables), weights):
        variable.assign(value)
    folder = storage.join(out_dir, names.PRERANK_DIR)
    export_tower(query_tower, storage.join(folder, names.QUERY_TOWER_DIR))
    export_tower(item_tower, storage.join(folder, names.ITEM_TOWER_DIR))
    doc = {**shape.to_dict(), "top_n": c.top_n, "history": history, "best_epoch": best,
           "val_cascade_recall_at_10": best_value,
           "val_retrieval_recall_at_10": getattr(validation, "retrieval_recall", None),
           "n_train_rows": len(rows), "n_train_rows_total": rows.n_total, "n_mined_keys": len(pools),
           "mining_seconds": round(mining_seconds, 3), "hard_negatives": c.hard_negatives,
           "random_negatives": c.random_negatives, "contrastive_weight": c.contrastive_weight,
           "use_retrieval_score": c.use_retrieval_score, "loss": c.loss,
           "seconds": round(time.perf_counter() - start, 3)}
    storage.write_text(storage.join(folder, names.PRERANK_FILE), json.dumps(doc, indent=2))
    return doc
