"""Warm start: a train run begins from the live version's tower weights instead of random ones.

A version published with ``train.warm_start`` on carries ``warm_start/``: every tower variable
of its early-stopped model (trained on the train split only, also when the published towers
were refit on every split: tomorrow's held-out pairs are mostly today's, and a warm start from
weights that trained on them would score itself on its own training data)
(``variables.npz``, by variable name) and the vocabulary of every embedding table
(``vocabularies.json``: variable name -> the lookup's tokens and its OOV row count). A new run's
vocabularies differ from the live one's (the catalog and the user base move every day), so
each table is remapped by token: a token both runs know keeps its trained row, a new token
gets the new model's freshly initialised row, a token that left is dropped; the OOV rows are
copied. Every other variable (dense layers, attention projections, recency weights) is copied
when its shape matches and left fresh otherwise (a changed ``hidden_dims``, say). Optimizer
slots always start fresh: the learning rate schedule starts over too.

TensorFlow only through the towers passed in; numpy for the files.
"""

from __future__ import annotations

import io
import json
import os
from typing import Optional, Sequence

import numpy as np

from core import storage

WARM_DIR = "warm_start"
VARIABLES = "variables.npz"
VOCABULARIES = "vocabularies.json"


def _key(towers: Sequence, variable) -> str:
    """A variable's name from its tower's name on: TensorFlow prefixes the scope a variable was
    first created in (``while/`` when the chunked train loop built it), which is not stable."""
    name = variable.name
    starts = [name.find(f"{tower.name}/") for tower in towers if f"{tower.name}/" in name]
    return name[min(starts):] if starts else name


def _tables(towers: Sequence) -> dict[str, tuple[list[str], int]]:
    """Embedding variable name -> (vocabulary tokens, OOV rows in front of them), for every
    encoder table looked up through a StringLookup (hashed bigram tables have none)."""
    out = {}
    for tower in towers:
        for encoder in tower.encoders.values():
            lookup, embedding = getattr(encoder, "lookup", None), getattr(encoder, "embedding", None)
            if lookup is None or embedding is None:
                continue
            tokens = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in lookup.get_vocabulary()]
            oov = int(lookup.num_oov_indices)
            out[_key(towers, embedding.embeddings)] = (tokens[oov:], oov)
    return out


def _variables(towers: Sequence) -> dict:
    """Variable name -> variable, each once (a table shared by both towers is one variable)."""
    out = {}
    for tower in towers:
        for variable in tower.variables:
            out.setdefault(_key(towers, variable), variable)
    return out


def save_weights(towers: Sequence, folder: str) -> None:
    """Write ``folder``/variables.npz and vocabularies.json for a later warm start."""
    if not storage.is_gcs(folder):
        os.makedirs(folder, exist_ok=True)
    arrays = {name: variable.numpy() for name, variable in _variables(towers).items()}
    buf = io.BytesIO()
    # Names hold "/" and ":": savez keys are positional, the names are listed beside them.
    np.savez(buf, names=np.array(list(arrays), dtype=object), **{f"v{i}": a for i, a in enumerate(arrays.values())})
    storage.write_bytes(storage.join(folder, VARIABLES), buf.getvalue())
    tables = {name: {"tokens": tokens, "oov_rows": oov} for name, (tokens, oov) in _tables(towers).items()}
    storage.write_text(storage.join(folder, VOCABULARIES), json.dumps(tables))


def read_weights(folder: str) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(variable name -> array, table name -> {"tokens", "oov_rows"}) from :func:`save_weights`."""
    with np.load(io.BytesIO(storage.read_bytes(storage.join(folder, VARIABLES))), allow_pickle=True) as npz:
        names = list(npz["names"])
        arrays = {str(name): npz[f"v{i}"] for i, name in enumerate(names)}
    return arrays, json.loads(storage.read_text(storage.join(folder, VOCABULARIES)))


def remap_rows(old: np.ndarray, old_tokens: Sequence[str], old_oov: int, fresh: np.ndarray,
               new_tokens: Sequence[str], new_oov: int) -> tuple[np.ndarray, dict]:
    """A new table [len(new_tokens) + new_oov, F]: ``fresh`` with every row whose token the old
    table [len(old_tokens) + old_oov, F] also has replaced by the old row (OOV rows copied when
    the counts match). Returns (table, {"kept", "new", "dropped"} token counts)."""
    table = fresh.copy()
    position = {token: i for i, token in enumerate(old_tokens)}
    if old_oov == new_oov:
        table[:new_oov] = old[:old_oov]
    kept = 0
    for j, token in enumerate(new_tokens):
        i = position.get(token)
        if i is not None:
            table[new_oov + j] = old[old_oov + i]
            kept += 1
    return table, {"kept": kept, "new": len(new_tokens) - kept, "dropped": len(old_tokens) - kept}


def warm_start(towers: Sequence, folder: str) -> dict:
    """Load the weights in ``folder`` into ``towers`` (built: their variables exist).

    Returns:
        {"copied": [names], "remapped": {name: {"kept", "new", "dropped"}}, "fresh": [names
        with no usable old value]}.
    """
    arrays, old_tables = read_weights(folder)
    new_tables = _tables(towers)
    report: dict = {"copied": [], "remapped": {}, "fresh": []}
    for name, variable in _variables(towers).items():
        old = arrays.get(name)
        if name in new_tables and name in old_tables and old is not None:
            tokens, oov = new_tables[name]
            table, counts = remap_rows(old, old_tables[name]["tokens"], int(old_tables[name]["oov_rows"]),
                                       variable.numpy(), tokens, oov)
            variable.assign(table)
            report["remapped"][name] = counts
        elif old is not None and tuple(old.shape) == tuple(variable.shape):
            variable.assign(old)
            report["copied"].append(name)
        else:
            report["fresh"].append(name)
    return report


def live_weights(store: str, cache_dir: str) -> Optional[tuple[str, str]]:
    """(live version id, its local warm_start folder), or None when the store has no live
    version or the live version was published without warm-start weights."""
    from core.store import VersionStore

    vs = VersionStore(store)
    version = vs.current()
    if version is None:
        return None
    manifest = vs.read_manifest(version)
    if not any(path.startswith(f"{WARM_DIR}/") for path in (manifest.get("files") or {})):
        return None
    folder = vs.fetch_version(version, cache_dir)
    return version, storage.join(folder, WARM_DIR)
