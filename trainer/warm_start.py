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
when its shape matches and left fresh otherwise (a changed ``hidden_dims``, say).

The optimizer's state travels too (``optimizer.npz``: every slot by slot and variable name;
``optimizer.json``: the optimizer class and its step count), unless
``train.warm_start_optimizer`` is ``fresh``: with zero slots Adam's first updates are
``lr * sign(gradient)`` on every weight a batch touches, a kick as large as a random start gets,
while the carried moments keep the step sizes where yesterday's run left them. Slots are
remapped like their variables (a new token's rows start at the optimizer's initial value); a
different optimizer class, or a tf_keras release whose internals are not the verified ones
(trainer/optimizers.py), starts the state fresh, and the load report says so. The saved slots
are the optimizer's at the end of the run, beside the early-stopped weights.

TensorFlow only through the towers passed in; numpy for the files.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from core import storage

WARM_DIR = "warm_start"
VARIABLES = "variables.npz"
VOCABULARIES = "vocabularies.json"
OPTIMIZER_SLOTS = "optimizer.npz"
OPTIMIZER_META = "optimizer.json"


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
        for encoder in tower.table_layers:
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


def _write_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    # Names hold "/" and ":": savez keys are positional, the names are listed beside them.
    np.savez(buf, names=np.array(list(arrays), dtype=object), **{f"v{i}": a for i, a in enumerate(arrays.values())})
    storage.write_bytes(path, buf.getvalue())


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=True) as npz:
        return {str(name): npz[f"v{i}"] for i, name in enumerate(list(npz["names"]))}


def _slots(towers: Sequence, optimizer) -> dict[str, tuple[str, object]]:
    """"<slot>/<variable name>" -> (variable name, slot variable) for every tower variable the
    optimizer holds state for (see trainer.optimizers.slot_variables)."""
    from trainer.optimizers import slot_variables

    out = {}
    for name, variable in _variables(towers).items():
        for slot, slot_variable in slot_variables(optimizer, variable).items():
            out[f"{slot}/{name}"] = (name, slot_variable)
    return out


def save_weights(towers: Sequence, folder: str, optimizer=None) -> None:
    """Write ``folder``/variables.npz and vocabularies.json for a later warm start, and with
    ``optimizer`` its state (optimizer.npz, optimizer.json)."""
    if not storage.is_gcs(folder):
        os.makedirs(folder, exist_ok=True)
    _write_arrays(storage.join(folder, VARIABLES),
                  {name: variable.numpy() for name, variable in _variables(towers).items()})
    tables = {name: {"tokens": tokens, "oov_rows": oov} for name, (tokens, oov) in _tables(towers).items()}
    storage.write_text(storage.join(folder, VOCABULARIES), json.dumps(tables))
    slots = _slots(towers, optimizer) if optimizer is not None else {}
    if slots:
        _write_arrays(storage.join(folder, OPTIMIZER_SLOTS), {key: v.numpy() for key, (_, v) in slots.items()})
        storage.write_text(storage.join(folder, OPTIMIZER_META), json.dumps(
            {"optimizer": type(optimizer).__name__, "iterations": int(optimizer.iterations.numpy())}))


def read_weights(folder: str) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """(variable name -> array, table name -> {"tokens", "oov_rows"}) from :func:`save_weights`."""
    return (_read_arrays(storage.join(folder, VARIABLES)),
            json.loads(storage.read_text(storage.join(folder, VOCABULARIES))))


def saved_optimizer(folder: str) -> Optional[dict]:
    """{"optimizer": class name, "iterations": step count} of the state saved in ``folder``, or
    None when it was saved without one."""
    path = storage.join(folder, OPTIMIZER_META)
    return json.loads(storage.read_text(path)) if storage.exists(path) else None


def carried_step(folder: str, optimizer_class: str) -> int:
    """The step count a warm start from ``folder`` carries into an ``optimizer_class`` optimizer
    (its class name, e.g. "Adam"): the saved one when :func:`warm_start` will load the state,
    else 0 (saved without state, by another optimizer, or internals not the verified ones)."""
    from trainer.optimizers import internals_supported

    meta = saved_optimizer(folder)
    if meta is None or meta["optimizer"] != optimizer_class or not internals_supported():
        return 0
    return int(meta["iterations"])


def _remapped(name: str, old: np.ndarray, current: np.ndarray, old_tables: dict, new_tables: dict):
    """``old`` fitted to ``current``'s shape: a table's rows remapped by token, any other
    variable as is when the shapes match; None when it cannot be used. Returns (array, counts)."""
    if name in new_tables and name in old_tables:
        tokens, oov = new_tables[name]
        return remap_rows(old, old_tables[name]["tokens"], int(old_tables[name]["oov_rows"]), current, tokens, oov)
    if tuple(old.shape) == tuple(current.shape):
        return old, None
    return None, None


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


def warm_start(towers: Sequence, folder: str, optimizer=None) -> dict:
    """Load the weights in ``folder`` into ``towers`` (built: their variables exist) and, with
    ``optimizer`` (built for them), its saved state and step count.

    Returns:
        {"copied": [names], "remapped": {name: {"kept", "new", "dropped"}}, "fresh": [names
        with no usable old value], "optimizer": {"state": "carried" | "fresh", "why" (when
        fresh), "iterations", "slots" (carried slot variables)} (None without ``optimizer``)}.
    """
    arrays, old_tables = read_weights(folder)
    new_tables = _tables(towers)
    report: dict = {"copied": [], "remapped": {}, "fresh": [], "optimizer": None}
    for name, variable in _variables(towers).items():
        old = arrays.get(name)
        value, counts = (None, None) if old is None else _remapped(name, old, variable.numpy(), old_tables, new_tables)
        if value is None:
            report["fresh"].append(name)
            continue
        variable.assign(value)
        if counts is not None:
            report["remapped"][name] = counts
        else:
            report["copied"].append(name)
    if optimizer is not None:
        report["optimizer"] = _load_optimizer(towers, folder, optimizer, old_tables, new_tables)
    return report


def _load_optimizer(towers: Sequence, folder: str, optimizer, old_tables: dict, new_tables: dict) -> dict:
    """Assign the slots and step count saved in ``folder`` to ``optimizer``; see :func:`warm_start`."""
    meta = saved_optimizer(folder)
    if meta is None:
        return {"state": "fresh", "why": "the live version was saved without optimizer state", "iterations": 0}
    if meta["optimizer"] != type(optimizer).__name__:
        return {"state": "fresh", "why": f"saved by {meta['optimizer']}, this run uses {type(optimizer).__name__}",
                "iterations": 0}
    slots = _slots(towers, optimizer)
    if not slots:
        return {"state": "fresh", "why": "this tf_keras's optimizer internals are not the verified ones",
                "iterations": 0}
    saved = _read_arrays(storage.join(folder, OPTIMIZER_SLOTS))
    carried = 0
    for key, (name, slot_variable) in slots.items():
        old = saved.get(key)
        value = None if old is None else _remapped(name, old, slot_variable.numpy(), old_tables, new_tables)[0]
        if value is not None:
            slot_variable.assign(value)
            carried += 1
    optimizer.iterations.assign(int(meta["iterations"]))
    return {"state": "carried", "iterations": int(meta["iterations"]), "slots": carried}


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


@dataclass(frozen=True)
class WarmPlan:
    """How a train run starts: from random weights (cold) or from the live version's.

    Attributes:
        version: the live version warm-started from, or None (cold).
        folder: its local warm_start folder, or None.
        epochs: epochs to train (``train.warm_start_epochs`` warm, ``train.n_epochs`` cold).
        lr_scale: the peak learning rate's factor (``train.warm_start_lr_scale`` warm, else 1).
        carry_optimizer: whether the optimizer state travels (``train.warm_start_optimizer``).
        first_step: the optimizer step the run starts at (the carried count, else 0).
    """

    version: Optional[str]
    folder: Optional[str]
    epochs: int
    lr_scale: float
    carry_optimizer: bool
    first_step: int

    @property
    def warm(self) -> bool:
        return self.version is not None

    def report(self) -> dict:
        """training.json's ``warm_start`` before the load: where the weights start."""
        return {"from": self.version, "epochs": self.epochs, "lr_scale": self.lr_scale}

    def load(self, towers: Sequence, optimizer) -> dict:
        """Load the live weights (and the optimizer's state when carried) into the built
        ``towers`` and ``optimizer``; returns training.json's ``warm_start`` entry."""
        loaded = warm_start(towers, self.folder, optimizer if self.carry_optimizer else None)
        state = loaded["optimizer"] or {"state": "fresh", "why": "train.warm_start_optimizer=fresh", "iterations": 0}
        # The lr schedule counts from the step plan_warm_start promised: the load must carry it.
        assert state.get("iterations", 0) == self.first_step, (state, self.first_step)
        print(f"[train] warm start from live version {self.version}: {len(loaded['copied'])} variables copied, "
              f"{len(loaded['remapped'])} tables remapped by token, {len(loaded['fresh'])} fresh; optimizer state "
              + (f"carried at step {state['iterations']}" if state["state"] == "carried" else f"fresh ({state['why']})")
              + f"; {self.epochs} epoch(s)", flush=True)
        return {**self.report(), "copied": len(loaded["copied"]), "fresh": loaded["fresh"],
                "remapped": loaded["remapped"], "optimizer": state}


def plan_warm_start(config) -> WarmPlan:
    """The run's :class:`WarmPlan`: warm when ``train.warm_start`` is on and ``publish.store``'s
    live version carries warm-start weights (fetched into a temporary folder removed at exit)."""
    from trainer.optimizers import optimizer_class

    t = config.train
    source = None
    if t.warm_start:
        cache = tempfile.mkdtemp(prefix="twotower-warm-")
        atexit.register(shutil.rmtree, cache, True)
        source = live_weights(config.publish.store, cache)
    if source is None:
        return WarmPlan(None, None, t.n_epochs, 1.0, t.warm_start and t.warm_start_optimizer == "carry", 0)
    carry = t.warm_start_optimizer == "carry"
    first_step = carried_step(source[1], optimizer_class(t.optimizer).__name__) if carry else 0
    return WarmPlan(source[0], source[1], t.warm_start_epochs, t.warm_start_lr_scale, carry, first_step)
