"""The TFRS basic-retrieval tutorial model, as a reference to measure ours against.

Faithful to https://www.tensorflow.org/recommenders/examples/basic_retrieval:

- query tower: StringLookup(vocabulary of query keys, mask_token=None) -> Embedding(V + 1, 32);
- item tower: StringLookup(vocabulary of catalog item ids) -> Embedding(V + 1, 32);
- no other features, no MLP, no normalisation, no temperature: raw dot products;
- ``tfrs.tasks.Retrieval()`` with its defaults (in-batch softmax, summed loss, no
  accidental-hit removal); Adagrad(learning_rate=0.1); ``shuffle(100_000).batch(8192).cache()``
  (shuffled once, the same batches every epoch, as in the tutorial); 3 epochs.

The tutorial's FactorizedTopK metric only *reports* during training (it never changes
the gradients), so it is left out; evaluation happens afterwards with the pipeline's own
evaluator. It reads the same train TFRecords as our trainer (only the query key and
``item_id`` columns are parsed) and exports both towers with the SAME SavedModel
contract as ``trainer.export`` (``serving_default``: raw named inputs, tf.string or
tf.float32 [None] -> ``{"embedding": float32 [None, 32]}``), so
``evaluation.evaluate.evaluate_model`` scores it with exactly the code that scores ours.
The query tower accepts every declared query feature and the item tower ``item_id``
plus every item feature; both ignore everything but their key. Embeddings are NOT
L2-normalised (the tutorial scores with raw dot products).

    from bench.reference import train_reference
    summary = train_reference(config, transformed_dir, out_dir, seed=0)

Writes ``query_tower/``, ``item_tower/`` and ``training.json`` (``history`` with per-epoch
``loss``, ``seconds`` (wall) and ``cpu_seconds`` (process CPU time), ``examples_per_second`` and
``cpu_examples_per_second`` = medians over epochs, ``n_train``).
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

import core  # noqa: F401 (sets the TF environment before anything imports TensorFlow)
from core.contracts import files as contract

#: Tutorial settings (basic_retrieval.ipynb).
EMBEDDING_DIMS = 32
LEARNING_RATE = 0.1
BATCH_SIZE = 8192
EPOCHS = 3
SHUFFLE_BUFFER = 100_000


@dataclass(frozen=True)
class ReferenceSettings:
    """Hyper-parameters; the defaults are the tutorial's."""

    embedding_dims: int = EMBEDDING_DIMS
    learning_rate: float = LEARNING_RATE
    batch_size: int = BATCH_SIZE
    epochs: int = EPOCHS
    shuffle_buffer: int = SHUFFLE_BUFFER


def _tf():
    import tensorflow as tf

    return tf


def _key_specs(config):
    """FeatureSpecs of the two columns the reference reads: the query key and item_id."""
    from core.config import FeatureSpec
    from core.records import ITEM_KEY

    return [FeatureSpec(name=config.schema.query_key, type="id"), FeatureSpec(name=ITEM_KEY, type="id")]


def _read_column(files, name: str) -> list[str]:
    """All values of one string column of ``files`` (in file order)."""
    from core.config import FeatureSpec
    from core.records import tf_feature_description

    tf = _tf()
    if not files:
        return []
    desc = tf_feature_description([FeatureSpec(name=name, type="id")])
    ds = tf.data.TFRecordDataset(list(files)).batch(8192).map(lambda r: tf.io.parse_example(r, desc))
    out: list[str] = []
    for batch in ds:
        out.extend(v.decode("utf-8") for v in batch[name].numpy())
    return out


def _unique(values) -> list[str]:
    return list(dict.fromkeys(values))


def build_reference_model(query_vocab, item_vocab, settings: ReferenceSettings = ReferenceSettings(),
                          query_key: str = "user_id"):
    """The tutorial's ``MovielensModel``: (model, query_tower, item_tower).

    ``query_tower`` / ``item_tower`` map [B] tf.string ids to float32 [B, embedding_dims].
    """
    tf = _tf()
    import tensorflow_recommenders as tfrs
    from core.records import ITEM_KEY

    dims = settings.embedding_dims

    def tower(vocab, name):
        vocab = list(vocab)
        if not vocab:
            raise ValueError(f"{name}: empty vocabulary")
        return tf.keras.Sequential([
            tf.keras.layers.StringLookup(vocabulary=vocab, mask_token=None),
            tf.keras.layers.Embedding(len(vocab) + 1, dims),
        ], name=name)

    query_tower = tower(query_vocab, "reference_query_tower")
    item_tower = tower(item_vocab, "reference_item_tower")

    class ReferenceModel(tfrs.Model):
        def __init__(self):
            super().__init__()
            self.query_model = query_tower
            self.item_model = item_tower
            self.task = tfrs.tasks.Retrieval()

        def compute_loss(self, features, training=False):
            query = self.query_model(features[query_key])
            item = self.item_model(features[ITEM_KEY])
            return self.task(query, item, compute_metrics=False)

    model = ReferenceModel()
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=settings.learning_rate))
    return model, query_tower, item_tower


def _signature(specs):
    from core.records import is_numeric

    tf = _tf()
    return {s.name: tf.TensorSpec([None], tf.float32 if is_numeric(s) else tf.string, name=s.name)
            for s in specs}


def export_reference_tower(model, specs, key: str, path: str) -> str:
    """Save ``model`` (a [B] string -> [B, D] Keras model applied to input ``key``) as a
    SavedModel whose ``serving_default`` accepts every feature in ``specs`` by name
    (tf.string / tf.float32 [None]) and returns ``{"embedding": float32 [None, D]}``.
    """
    from core.towers import OUTPUT_KEY, SIGNATURE

    tf = _tf()
    names = [s.name for s in specs]
    if key not in names:
        raise ValueError(f"export: the key input {key!r} is not among the signature inputs {names}")

    @tf.function(input_signature=[_signature(specs)])
    def serve(features):
        # Raw dot-product embeddings: no L2 normalisation (the tutorial's scoring).
        return {OUTPUT_KEY: tf.cast(model(features[key]), tf.float32)}

    module = tf.Module()
    module.model = model  # tracks the variables and the lookup table
    module.serve = serve
    tf.saved_model.save(module, path, signatures={SIGNATURE: serve.get_concrete_function()})
    return path


def train_reference(config, transformed_dir: str, out_dir: str, seed: int = 0,
                    settings: ReferenceSettings = ReferenceSettings(), verbose: bool = True) -> dict:
    """Train the tutorial model on ``transformed_dir``'s train split; export to ``out_dir``.

    Vocabularies: the distinct query keys of the train split (in first-seen order) and
    every catalog item id (``items-*.tfrecord``), like the tutorial's unique user ids and
    movie titles. Keys never seen in train fall into the single OOV row.

    Returns the ``training.json`` dict.
    """
    from core.records import ITEM_KEY, item_specs, tf_feature_description
    from trainer import artifacts

    tf = _tf()
    tf.keras.utils.set_random_seed(seed)
    out_dir = out_dir.rstrip("/")
    tf.io.gfile.makedirs(out_dir)
    key = config.schema.query_key

    train_files = artifacts.require_split_files(transformed_dir, "train")
    query_vocab = _unique(_read_column(train_files, key))
    item_vocab = _unique(_read_column(artifacts.require_split_files(transformed_dir, "items"), ITEM_KEY))
    desc = tf_feature_description(_key_specs(config))
    parsed = tf.data.TFRecordDataset(train_files).batch(8192).map(
        lambda r: tf.io.parse_example(r, desc)).unbatch()
    # The tutorial's `train.shuffle(100_000).batch(8192).cache()`: shuffled once, batched and
    # cached, so every epoch replays the same batches. Counting the records fills the cache.
    dataset = parsed.shuffle(settings.shuffle_buffer, seed=seed).batch(settings.batch_size).cache()
    n_train = int(dataset.reduce(tf.constant(0, tf.int64),
                                 lambda n, b: n + tf.cast(tf.shape(b[key])[0], tf.int64)))
    if n_train == 0:
        raise ValueError(f"{transformed_dir}: the train split is empty")

    model, query_tower, item_tower = build_reference_model(query_vocab, item_vocab, settings, key)
    history = []
    for epoch in range(1, settings.epochs + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        hist = model.fit(dataset, epochs=1, verbose=0)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        loss = float(hist.history["loss"][-1])
        history.append({"epoch": epoch, "loss": loss, "seconds": seconds, "cpu_seconds": cpu_seconds})
        if verbose:
            print(f"[reference] epoch {epoch}/{settings.epochs} loss={loss:.1f} {seconds:.1f}s "
                  f"{n_train / max(seconds, 1e-9):,.0f} ex/s", flush=True)

    export_reference_tower(query_tower, list(config.schema.query_features), key,
                           f"{out_dir}/{contract.QUERY_TOWER_DIR}")
    export_reference_tower(item_tower, item_specs(config.schema), ITEM_KEY, f"{out_dir}/{contract.ITEM_TOWER_DIR}")
    summary = {
        "model": "tfrs-basic-retrieval",
        "settings": settings.__dict__,
        "history": history,
        "examples_per_second": statistics.median(n_train / max(h["seconds"], 1e-9) for h in history),
        "cpu_examples_per_second": statistics.median(n_train / max(h["cpu_seconds"], 1e-9) for h in history),
        "n_train": n_train,
        "query_vocab_size": len(query_vocab),
        "item_vocab_size": len(item_vocab),
    }
    with tf.io.gfile.GFile(f"{out_dir}/{contract.TRAINING_FILE}", "w") as fh:
        fh.write(json.dumps(summary, indent=2))
    return summary
