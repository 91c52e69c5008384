"""The Python and TensorFlow text normalisers must agree exactly (train/serve parity)."""

import numpy as np

from core.text import normalize_text, tf_normalize_text, tokenize

CASES = ["Nike Air-Max 90!", "  RED dress -- for   Wedding ", "iPhone 13 (128GB)", "", "ÉCLAIR café",
         "usb-c charger, 65W", "tab\tand\nnewline", "already clean"]


def test_hand_checked_examples():
    assert normalize_text("Nike Air-Max 90!") == "nike air max 90"
    assert normalize_text(None) == ""
    assert normalize_text(float("nan")) == ""
    assert tokenize("Best  LAPTOP for   school", max_tokens=2) == ["best", "laptop"]


def test_tensorflow_twin_agrees():
    got = [s.decode() for s in tf_normalize_text(np.array(CASES, dtype=object)).numpy()]
    assert got == [normalize_text(c) for c in CASES]
