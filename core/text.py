"""Text normalisation shared by the Beam transform (Python) and the towers (TensorFlow).

Both implementations must agree exactly; ``tests/unit/core/test_text.py`` checks parity.
The rule: Unicode NFKC (full-width letters and ligatures become plain ones, a letter with a
combining accent becomes one character), lower-case, every run of characters outside [a-z0-9]
becomes one space, trim. "Nike Air-Max 90!" -> "nike air max 90".

TensorFlow has no NFKC op, so the TF twin applies only the last three steps: it agrees with
:func:`normalize_text` on NFKC-normal input, which is what the towers receive (the transform
and the query service both clean text with :func:`normalize_text` first; core/cleaning.py).
"""

from __future__ import annotations

import re
import unicodedata

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
#: The same rule as a RE2 pattern for tf.strings.regex_replace.
TF_NON_ALNUM_PATTERN = r"[^a-z0-9]+"


def normalize_text(value: object) -> str:
    """Normalise one raw text value (None and NaN become "")."""
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from pandas
        return ""
    return _NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", str(value)).lower()).strip()


def tokenize(value: object, max_tokens: int | None = None) -> list[str]:
    """Whitespace tokens of the normalised text, at most ``max_tokens``."""
    tokens = normalize_text(value).split()
    return tokens if max_tokens is None else tokens[:max_tokens]


def tf_normalize_text(strings):
    """TensorFlow twin of :func:`normalize_text` for a string tensor of any shape.

    Imports TensorFlow lazily so the Beam workers and CLI stay light.
    """
    import tensorflow as tf

    lowered = tf.strings.lower(strings, encoding="utf-8")
    spaced = tf.strings.regex_replace(lowered, TF_NON_ALNUM_PATTERN, " ")
    return tf.strings.strip(spaced)
