"""Synthetic implicit-feedback dataset ("synth-interactions") in the canonical folder format.

``generate_interactions(out_dir, items, users, interactions)`` writes three parquet files:

- ``items.parquet``: ``item_id`` (``i1`` .. ``iN``), ``category`` (str, a categorical such as
  ``kitchen`` or ``kitchen 2`` past the 40 base names), ``brand`` (str, a categorical; each
  category stocks 8 brands of a shared pool), ``title`` (str, text:
  ``"<brand> <Category> <adjective> <item number>"``, e.g. ``"Velmora Kitchen Pro 456"``),
  ``price`` (float64, US dollars, two decimals).
- ``users.parquet``: ``user_id`` (``u1`` .. ``uU``), ``segment`` (str, a categorical that
  names the user's main taste's segment 70% of the time, a random one otherwise).
- ``interactions.parquet``: ``user_id``, ``item_id``, ``timestamp`` (int64 unix seconds in
  [``END_TIMESTAMP`` - 365 days, ``END_TIMESTAMP``), strictly increasing per user). Every row is
  a positive (no ``label`` column). Rows are grouped by user, each user's in time order.

Parquet, not csv: ingest reads csv line by line in Python (to dead-letter bad rows one by
one) but parquet column-wise in arrow, which is what a 10M-row benchmark needs.

Planted structure (what a two-tower model can learn and a popularity baseline cannot):

- Item popularity is Zipf-like: item weight ``rank ** -ZIPF_EXPONENT`` (1.1) over a random
  ranking, so the top 1% of items hold most interactions.
- Every item has one category; categories have Zipf-like sizes (exponent 0.6). Every user
  has 1-3 favourite categories (35/40/25%) with Dirichlet(1) weights; ``TASTE_SHARE`` (85%) of
  the user's fresh category draws come from them, the rest from the category prior. Within a
  category the item is drawn by popularity.
- Sequential coherence: with probability ``STICKINESS`` (0.6) an interaction keeps the
  category of the user's previous one, so a user's last item tends to share its category with
  the one before it (what leave-last-out tests).
- Users do not repeat items: a repeated (user, item) pair is redrawn (by popularity, then
  uniformly within its category). Only a user with more interactions in a category than the
  category's draws can reach keeps a repeat (tiny catalogs); ``repeat_pairs`` counts them.
  Timestamps are distinct per user, so no (user, item, timestamp) row repeats in any case.
- Activity is lognormal (sigma 1): every user gets ``min(3, interactions // users)``
  interactions, the rest are shared multinomially by activity, so the total is exact and,
  when ``interactions >= 3 * users``, leave-last-out has train, valid and test for everyone.

Deterministic for a seed, and independent of ``chunk_rows``: every random draw comes from a
numpy stream named by (seed, purpose, block of ``USER_BLOCK`` users), never from how rows are
batched for writing, and parquet row groups are exactly ``chunk_rows`` rows, so a given
pyarrow version writes the same bytes. Memory follows the catalog (about 50 bytes per item,
10-25 per user) plus one row group and one user block, not the interaction count: 10M
interactions x 1M items x 1M users peaked at 0.4 GB, 100M x 1M x 10M users at 0.5 GB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Timestamps end before 2024-01-01T00:00:00Z: fixed, so a dataset never holds a "future"
#: interaction relative to when a test runs, and its bytes do not depend on the clock.
END_TIMESTAMP = 1_704_067_200
WINDOW_SECONDS = 365 * 86_400
ZIPF_EXPONENT = 1.1
CATEGORY_EXPONENT = 0.6
TASTE_SHARE = 0.85
STICKINESS = 0.6
FAVOURITE_COUNT_P = (0.35, 0.40, 0.25)  # P(1, 2, 3 favourite categories)
ACTIVITY_SIGMA = 1.0
MIN_PER_USER = 3
SEGMENT_SIGNAL = 0.7
BRANDS_PER_CATEGORY = 8
#: Users per random stream: part of the output's definition (changing it changes the data).
USER_BLOCK = 8192
DEFAULT_CHUNK_ROWS = 1 << 20
MAX_CATEGORIES = 10_000
#: Mean interactions per user at most; keeps the heaviest user far below one per second.
MAX_MEAN_PER_USER = 10_000
_POPULAR_REDRAWS, _UNIFORM_REDRAWS = 4, 4
_STREAM_CATALOG, _STREAM_ACTIVITY, _STREAM_USERS = 0, 1, 2

BASE_CATEGORIES = (
    "books", "electronics", "kitchen", "garden", "toys", "beauty", "sports", "music", "movies",
    "grocery", "pet supplies", "office", "automotive", "baby", "jewelry", "shoes", "clothing",
    "health", "tools", "video games", "furniture", "outdoor", "crafts", "software", "cameras",
    "phones", "watches", "bags", "lighting", "bedding", "bath", "party", "travel", "fitness",
    "cycling", "fishing", "camping", "stationery", "snacks", "beverages")
SEGMENTS = ("students", "parents", "professionals", "retirees", "gamers", "travellers",
            "athletes", "creatives")
ADJECTIVES = ("Classic", "Pro", "Lite", "Plus", "Max", "Mini", "Eco", "Deluxe", "Essential",
              "Premium", "Sport", "Travel", "Smart", "Original", "Compact", "Ultra")
_BRAND_HEADS = ("Vel", "Nor", "Kas", "Tri", "Lum", "Ora", "Zen", "Bri", "Cor", "Dal", "Fen",
                "Gal", "Hol", "Ist", "Jor", "Mar", "Nex", "Pol", "Qui", "Ros", "Sol", "Tav",
                "Ula", "Wex")
_BRAND_TAILS = ("mora", "ix", "ana", "ton", "ella", "ro", "via", "dex", "ino", "ara", "on",
                "ique", "o", "ent", "is", "ux")

INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                                 ("timestamp", pa.int64())])
ITEMS_SCHEMA = pa.schema([("item_id", pa.string()), ("category", pa.string()),
                          ("brand", pa.string()), ("title", pa.string()), ("price", pa.float64())])
USERS_SCHEMA = pa.schema([("user_id", pa.string()), ("segment", pa.string())])
TABLES = ("items", "users", "interactions")


class SynthInteractionsError(ValueError):
    """The requested sizes (or the output folder) cannot make a valid dataset; says why."""


def check_sizes(items: int, users: int, interactions: int, categories: int = 20,
                seed: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Raise :class:`SynthInteractionsError` naming the flag when the sizes cannot work."""
    for flag, value in (("--items", items), ("--users", users),
                        ("--interactions", interactions), ("--categories", categories)):
        if value < 1:
            raise SynthInteractionsError(f"{flag} must be >= 1, got {value}")
    if interactions < users:
        raise SynthInteractionsError(
            f"--interactions ({interactions}) must be >= --users ({users}): every user needs "
            f"at least one interaction (>= 3 per user for a leave-last-out test split)")
    if interactions > users * MAX_MEAN_PER_USER:
        raise SynthInteractionsError(
            f"--interactions ({interactions}) is more than {MAX_MEAN_PER_USER} per user "
            f"(--users {users}); add users")
    if categories > items:
        raise SynthInteractionsError(f"--categories ({categories}) must be <= --items ({items}): "
                                     f"every category needs an item")
    if categories > MAX_CATEGORIES:
        raise SynthInteractionsError(f"--categories must be <= {MAX_CATEGORIES}, got {categories}")
    if seed < 0:
        raise SynthInteractionsError(f"--seed must be >= 0, got {seed}")
    if chunk_rows < 1:
        raise SynthInteractionsError(f"chunk_rows must be >= 1, got {chunk_rows}")


def _rng(seed: int, stream: int, block: int = 0) -> np.random.Generator:
    """The random stream for one purpose (and one user block): independent of batching."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, block)))


# --------------------------------------------------------------------------- catalog


@dataclass(frozen=True)
class _Catalog:
    """Item attributes ([N] arrays, item index = number in ``i<index+1>``) and the tables
    that draw an item of a given category by popularity.

    ``order`` lists item indices grouped by category; category c owns
    ``order[start[c]:end[c]]``; ``cum`` is the running popularity weight along ``order``,
    ``base[c]`` its value before category c and ``mass[c]`` category c's total weight.
    """

    category: np.ndarray  # int32 [N]
    brand: np.ndarray  # int32 [N], index into brand_names
    adjective: np.ndarray  # int8 [N], index into ADJECTIVES
    price: np.ndarray  # float64 [N], dollars
    prior: np.ndarray  # float64 [C], share of the catalog and of fans per category
    order: np.ndarray  # int64 [N]
    cum: np.ndarray  # float64 [N]
    start: np.ndarray  # int64 [C]
    end: np.ndarray  # int64 [C]
    base: np.ndarray  # float64 [C]
    mass: np.ndarray  # float64 [C]
    category_names: tuple[str, ...]
    brand_names: tuple[str, ...]


def category_names(n: int) -> tuple[str, ...]:
    """``n`` distinct names: the base list, then ``"<base> 2"``, ``"<base> 3"``, ..."""
    k = len(BASE_CATEGORIES)
    return tuple(BASE_CATEGORIES[c % k] + ("" if c < k else f" {c // k + 1}") for c in range(n))


def brand_names() -> tuple[str, ...]:
    """The shared brand pool (384 invented names such as ``Velmora``)."""
    return tuple(h + t for h in _BRAND_HEADS for t in _BRAND_TAILS)


def _zipf_weights(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """[n] float64 weights ``rank ** -exponent`` over a random ranking (rank 1 = heaviest)."""
    return (rng.permutation(n) + 1.0) ** -exponent


def _build_catalog(seed: int, n_items: int, n_categories: int) -> _Catalog:
    rng = _rng(seed, _STREAM_CATALOG)
    prior = _zipf_weights(rng, n_categories, CATEGORY_EXPONENT)
    prior /= prior.sum()
    category = rng.choice(n_categories, n_items, p=prior).astype(np.int32)
    # Every category gets at least one item, so a fan of it always has something to draw.
    category[rng.permutation(n_items)[:n_categories]] = np.arange(n_categories, dtype=np.int32)
    weight = _zipf_weights(rng, n_items, ZIPF_EXPONENT)

    names = brand_names()
    per_cat = min(BRANDS_PER_CATEGORY, len(names))
    stocked = np.argsort(rng.random((n_categories, len(names))), axis=1)[:, :per_cat]
    brand_share = _zipf_weights(rng, per_cat, 1.0)
    local = rng.choice(per_cat, n_items, p=brand_share / brand_share.sum())
    brand = stocked[category, local].astype(np.int32)

    # Dollars: a category's price level, a brand's premium and an item's own spread.
    level = rng.lognormal(3.0, 0.9, n_categories)
    premium = rng.lognormal(0.0, 0.25, len(names))
    spread = rng.lognormal(0.0, 0.35, n_items)
    price = np.maximum(np.round(level[category] * premium[brand] * spread, 2), 0.99)
    adjective = rng.integers(0, len(ADJECTIVES), n_items).astype(np.int8)

    order = np.argsort(category, kind="stable")
    cum = np.cumsum(weight[order])
    start = np.searchsorted(category[order], np.arange(n_categories), side="left")
    end = np.searchsorted(category[order], np.arange(n_categories), side="right")
    base = np.where(start > 0, cum[np.maximum(start - 1, 0)], 0.0)
    return _Catalog(category=category, brand=brand, adjective=adjective, price=price, prior=prior,
                    order=order, cum=cum, start=start, end=end, base=base, mass=cum[end - 1] - base,
                    category_names=category_names(n_categories), brand_names=names)


def _popular_in(catalog: _Catalog, category: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item index [T] drawn by popularity within each row's category, from uniforms u [T]."""
    target = catalog.base[category] + u * catalog.mass[category]
    pos = np.searchsorted(catalog.cum, target, side="right")
    # Float rounding can land one past either end of the category's slice.
    pos = np.clip(pos, catalog.start[category], catalog.end[category] - 1)
    return catalog.order[pos]


def _uniform_in(catalog: _Catalog, category: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item index [T] drawn uniformly within each row's category (reaches the long tail)."""
    size = catalog.end[category] - catalog.start[category]
    pos = catalog.start[category] + np.minimum((u * size).astype(np.int64), size - 1)
    return catalog.order[pos]


def _ids(prefix: str, index: np.ndarray) -> pa.Array:
    """0-based indices [n] -> arrow strings ``<prefix><index+1>``."""
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(index + 1), pa.string()), "")


def _item_table(catalog: _Catalog, lo: int, hi: int) -> pa.Table:
    """items rows [lo, hi) as an arrow table (ITEMS_SCHEMA)."""
    index = np.arange(lo, hi, dtype=np.int64)
    cat = pa.array(catalog.category[lo:hi])
    brand = pa.array(catalog.brand_names).take(pa.array(catalog.brand[lo:hi]))
    title_words = pa.array([name.title() for name in catalog.category_names]).take(cat)
    adjective = pa.array(ADJECTIVES).take(pa.array(catalog.adjective[lo:hi]))
    title = pc.binary_join_element_wise(brand, title_words, adjective,
                                        pc.cast(pa.array(index + 1), pa.string()), " ")
    return pa.Table.from_arrays(
        [_ids("i", index), pa.array(catalog.category_names).take(cat), brand, title,
         pa.array(catalog.price[lo:hi])], schema=ITEMS_SCHEMA)


# --------------------------------------------------------------------------- users


def _interaction_counts(seed: int, n_users: int, n_interactions: int) -> np.ndarray:
    """Interactions per user, int64 [U], summing to exactly ``n_interactions``."""
    rng = _rng(seed, _STREAM_ACTIVITY)
    floor = min(MIN_PER_USER, n_interactions // n_users)
    activity = rng.lognormal(0.0, ACTIVITY_SIGMA, n_users)
    extra = rng.multinomial(n_interactions - floor * n_users, activity / activity.sum())
    return floor + extra.astype(np.int64)


def _tastes(rng: np.random.Generator, n: int, prior: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Favourite categories int [n, 3] and their cumulative weights float64 [n, 3] (last = 1).

    Slots past a user's 1-3 favourites weigh 0; a category drawn twice just weighs more.
    """
    favourite = rng.choice(len(prior), (n, 3), p=prior)
    count = rng.choice(3, n, p=FAVOURITE_COUNT_P) + 1
    weight = rng.exponential(size=(n, 3))  # Dirichlet(1, 1, 1) once normalised
    weight[np.arange(3)[None, :] >= count[:, None]] = 0.0
    cum = np.cumsum(weight, axis=1) / weight.sum(axis=1, keepdims=True)
    cum[:, -1] = 1.0
    return favourite, cum


def _segments(rng: np.random.Generator, favourite: np.ndarray, cum: np.ndarray) -> np.ndarray:
    """Segment index [n]: the main favourite's segment SEGMENT_SIGNAL of the time, else random."""
    weight = np.diff(cum, axis=1, prepend=0.0)
    main = favourite[np.arange(len(favourite)), np.argmax(weight, axis=1)]
    signal = rng.random(len(main)) < SEGMENT_SIGNAL
    return np.where(signal, main % len(SEGMENTS), rng.integers(0, len(SEGMENTS), len(main)))


def _category_sequence(rng: np.random.Generator, favourite: np.ndarray, cum: np.ndarray,
                       prior: np.ndarray, user: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Category [T] of each interaction, rows grouped by user in time order.

    ``user`` [T] is the row's user within the block, ``position`` [T] its rank in the user's
    history. A fresh draw comes from the user's tastes (or the prior, when exploring); a
    sticky row copies the category of the row before it.
    """
    total = len(user)
    slot = np.minimum((rng.random(total)[:, None] >= cum[user]).sum(axis=1), 2)
    fresh = favourite[user, slot]
    explore = rng.random(total) >= TASTE_SHARE
    fresh[explore] = rng.choice(len(prior), int(explore.sum()), p=prior)
    sticky = (rng.random(total) < STICKINESS) & (position > 0)
    # Each row reads the category of the last non-sticky row at or before it: a running max
    # of "own index where fresh, 0 where sticky"; position 0 is never sticky, so it never
    # reaches back into the previous user.
    source = np.where(sticky, 0, np.arange(total))
    np.maximum.accumulate(source, out=source)
    return fresh[source]


def _repeated(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Row indices whose (user, item) pair already occurred earlier in the block."""
    _, first = np.unique(user.astype(np.int64) * n_items + item, return_index=True)
    later = np.ones(len(user), dtype=bool)
    later[first] = False
    return np.flatnonzero(later)


def _draw_items(rng: np.random.Generator, catalog: _Catalog, category: np.ndarray,
                user: np.ndarray) -> tuple[np.ndarray, int]:
    """Item index [T] per row and the number of (user, item) repeats that could not be redrawn."""
    n_items = len(catalog.category)
    item = _popular_in(catalog, category, rng.random(len(category)))
    todo = _repeated(user, item, n_items)
    # Popularity redraws keep the head's shape; uniform ones then reach the tail that heavy
    # users of a small category need.
    for round_ in range(_POPULAR_REDRAWS + _UNIFORM_REDRAWS):
        if not len(todo):
            break
        draw = _popular_in if round_ < _POPULAR_REDRAWS else _uniform_in
        item[todo] = draw(catalog, category[todo], rng.random(len(todo)))
        todo = _repeated(user, item, n_items)
    return item, len(todo)


def _timestamps(rng: np.random.Generator, counts: np.ndarray, user: np.ndarray,
                position: np.ndarray) -> np.ndarray:
    """Unix seconds int64 [T], strictly increasing per user, all in [END - window, END).

    Each user is active over a random span ending at most ``counts`` seconds before END; the
    sorted uniform times in it are then pushed apart to be distinct (at most +1 s per earlier
    row), which is what keeps the last one below END.
    """
    room = np.maximum(WINDOW_SECONDS - counts, 0)
    span = (rng.uniform(0.05, 1.0, len(counts)) * room).astype(np.int64)
    start = END_TIMESTAMP - counts - span
    keyed = np.sort(user + rng.random(len(user)))  # uniforms sorted within each user
    raw = start[user] + ((keyed - user) * span[user]).astype(np.int64)
    # t'_k = max_{j<=k}(t_j - j) + k makes each user's times strictly increasing; the per-user
    # offset (> any time) stops the running max from carrying over from the previous user.
    offset = user.astype(np.int64) * END_TIMESTAMP
    shifted = raw - position + offset
    np.maximum.accumulate(shifted, out=shifted)
    return shifted - offset + position


@dataclass
class _UserBlock:
    users: pa.Table
    interactions: pa.Table
    item: np.ndarray  # int64 [T], for the popularity summary
    repeats: int


def _user_block(seed: int, block: int, first_user: int, counts: np.ndarray,
                catalog: _Catalog) -> _UserBlock:
    """Users [first_user, first_user + len(counts)) and all their interactions."""
    rng = _rng(seed, _STREAM_USERS, block)
    favourite, cum = _tastes(rng, len(counts), catalog.prior)
    segment = _segments(rng, favourite, cum)
    user = np.repeat(np.arange(len(counts)), counts)
    position = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    category = _category_sequence(rng, favourite, cum, catalog.prior, user, position)
    item, repeats = _draw_items(rng, catalog, category, user)
    timestamp = _timestamps(rng, counts, user, position)
    user_index = np.arange(first_user, first_user + len(counts), dtype=np.int64)
    users = pa.Table.from_arrays([_ids("u", user_index), pa.array(SEGMENTS).take(pa.array(segment))],
                                 schema=USERS_SCHEMA)
    interactions = pa.Table.from_arrays(
        [_ids("u", user_index[user]), _ids("i", item), pa.array(timestamp)],
        schema=INTERACTIONS_SCHEMA)
    return _UserBlock(users, interactions, item, repeats)


# --------------------------------------------------------------------------- writing


class _ParquetSink:
    """Appends arrow tables to one parquet file in row groups of exactly ``rows`` rows (the
    last one shorter), so the file does not depend on how its rows were generated.

    It writes to ``<path>.partial`` and renames on :meth:`close`, so a failed run never
    leaves a table ingest would take for a whole one.
    """

    def __init__(self, path: str, schema: pa.Schema, rows: int):
        self.path, self.rows = path, rows
        self._writer = pq.ParquetWriter(path + ".partial", schema)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.rows:
            self._flush(self.rows)

    def _flush(self, n: int) -> None:
        merged = pa.concat_tables(self._pending)
        # One contiguous chunk per row group: page boundaries then follow the row count
        # alone, not where the generator's batches happened to end.
        self._writer.write_table(merged.slice(0, n).combine_chunks(), row_group_size=n)
        rest = merged.slice(n)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()
        os.replace(self.path + ".partial", self.path)

    def abort(self) -> None:
        self._writer.close()
        os.remove(self.path + ".partial")


def _refuse_other_formats(out_dir: str) -> None:
    """A table already in another format would make ingest's input ambiguous: refuse."""
    if not os.path.isdir(out_dir):
        return
    present = set(os.listdir(out_dir))
    clash = sorted(f"{t}.{ext}" for t in TABLES for ext in ("csv", "jsonl") if f"{t}.{ext}" in present)
    if clash:
        raise SynthInteractionsError(f"{out_dir} already holds {', '.join(clash)}; ingest would see two "
                                     f"formats of one table: use an empty folder")


def _top_share(item_counts: np.ndarray, fraction: float = 0.01) -> float:
    """Share of interactions held by the most popular ``fraction`` of items."""
    top = max(1, int(len(item_counts) * fraction))
    return float(np.sort(item_counts)[::-1][:top].sum() / item_counts.sum())


def generate_interactions(out_dir: str, items: int, users: int, interactions: int,
                          seed: int = 0, categories: int = 20,
                          chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict:
    """Write items.parquet, users.parquet and interactions.parquet to ``out_dir``.

    ``items`` catalog rows, ``users`` users, exactly ``interactions`` rows, ``categories``
    item categories; ``chunk_rows`` rows per parquet row group (memory, not content).
    Returns ``{"items", "users", "interactions", "categories", "repeat_pairs",
    "top1pct_item_share"}``. Raises :class:`SynthInteractionsError` for impossible sizes
    (see :func:`check_sizes`) or an ``out_dir`` holding csv/jsonl tables.
    """
    check_sizes(items, users, interactions, categories, seed, chunk_rows)
    _refuse_other_formats(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    catalog = _build_catalog(seed, items, categories)
    counts = _interaction_counts(seed, users, interactions)
    sinks = {t: _ParquetSink(os.path.join(out_dir, f"{t}.parquet"), schema, chunk_rows)
             for t, schema in (("items", ITEMS_SCHEMA), ("users", USERS_SCHEMA),
                               ("interactions", INTERACTIONS_SCHEMA))}
    try:
        for lo in range(0, items, chunk_rows):
            sinks["items"].write(_item_table(catalog, lo, min(lo + chunk_rows, items)))
        item_counts = np.zeros(items, dtype=np.int64)
        repeats = 0
        for block, lo in enumerate(range(0, users, USER_BLOCK)):
            part = _user_block(seed, block, lo, counts[lo:lo + USER_BLOCK], catalog)
            sinks["users"].write(part.users)
            sinks["interactions"].write(part.interactions)
            np.add.at(item_counts, part.item, 1)  # O(rows), not O(catalog), per block
            repeats += part.repeats
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    for sink in sinks.values():
        sink.close()
    return {"items": items, "users": users, "interactions": int(counts.sum()),
            "categories": categories, "repeat_pairs": repeats,
            "top1pct_item_share": round(_top_share(item_counts), 4)}
