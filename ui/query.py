"""Answer the UI's query box from any published version, keeping loaded versions in memory.

Loading a version (verify checksums, load the query tower and the ScaNN index) takes
seconds, so loaded :class:`serving.retriever.Retriever` objects are cached per version,
least recently used evicted beyond ``max_versions``. A per-version lock makes concurrent
first queries of one version load it once; other versions are not blocked meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Optional

#: The page shows a table; more rows than this are not worth rendering.
MAX_UI_K = 100


class QueryError(ValueError):
    """The query cannot be answered; the message says why and is safe to show (no traceback)."""


def _default_loader(store: str, version: str):
    from serving.retriever import Retriever

    return Retriever.load(store, version=version)


class RetrieverCache:
    """Loaded retrievers per version id, at most ``max_versions`` of them."""

    def __init__(self, store: str, max_versions: int = 3,
                 loader: Optional[Callable[[str, str], object]] = None):
        if max_versions < 1:
            raise ValueError(f"max_versions must be >= 1, got {max_versions}")
        self.store = store
        self.max_versions = max_versions
        self._loader = loader or _default_loader
        self._lock = threading.Lock()  # guards _loaded and _loading
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    def resolve(self, version: Optional[str]) -> str:
        """The version id to use: ``version`` itself, or the live one when None/empty."""
        if version:
            return version
        from core.store import StoreError, VersionStore

        try:
            live = VersionStore(self.store).current()
        except StoreError as exc:  # a damaged CURRENT (or an unreadable store): its reason, not a 500
            raise QueryError(str(exc)) from None
        if not live:
            raise QueryError(f"store {self.store} has no live version (no CURRENT); publish one first")
        return live

    def get(self, version: Optional[str]):
        """The loaded retriever for ``version`` (None = live). QueryError when it cannot be loaded."""
        from core.store import StoreError

        vid = self.resolve(version)
        with self._lock:
            if vid in self._loaded:
                self._loaded.move_to_end(vid)
                return self._loaded[vid]
            gate = self._loading.setdefault(vid, threading.Lock())
        with gate:
            with self._lock:  # loaded by the thread we waited for?
                if vid in self._loaded:
                    self._loaded.move_to_end(vid)
                    return self._loaded[vid]
            try:
                retriever = self._loader(self.store, vid)
            except (StoreError, ValueError, LookupError, OSError) as exc:
                # Missing / corrupt / pre-serving versions: the reason, never a traceback, reaches the page.
                raise QueryError(f"version {vid} cannot be loaded: {exc}") from None
            with self._lock:
                self._loaded[vid] = retriever
                self._loaded.move_to_end(vid)
                while len(self._loaded) > self.max_versions:
                    self._loaded.popitem(last=False)
                self._loading.pop(vid, None)
            return retriever

    def cached_versions(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def query(self, text: Optional[str] = None, user_id: Optional[str] = None, k=10,
              version: Optional[str] = None) -> dict:
        """Top-k for a text query or a user id.

        Returns:
            {"version", "query" | "user_id", "k", "display_fields": [...],
             "results": [{"rank", "item_id", "score", "fields": {name: value}}]}
        Raises:
            QueryError: bad input, unknown key, or a version that cannot be loaded.
        """
        from serving.retriever import RequestError

        k = parse_k(k)
        text = text.strip() if isinstance(text, str) else text
        user_id = user_id.strip() if isinstance(user_id, str) else user_id
        if bool(text) == bool(user_id):
            raise QueryError("give either a text query or a user id")
        retriever = self.get(version)
        request = {"query": text} if text else {"user_id": user_id}
        try:
            answer = retriever.retrieve(request, k=k)
        except RequestError as exc:  # includes UnknownKeyError
            raise QueryError(str(exc)) from None
        shown = list(retriever.manifest.get("serving", {}).get("display_fields") or [])
        results = []
        for rank, (item, score) in enumerate(zip(answer["items"], answer["scores"]), start=1):
            fields = shown or [f for f in item if f != "item_id"]
            results.append({"rank": rank, "item_id": str(item.get("item_id")), "score": float(score),
                            "fields": {f: item.get(f) for f in fields}})
        columns = shown or (list(results[0]["fields"]) if results else [])
        return {"version": answer["version"], **request, "k": k, "display_fields": columns,
                "results": results}


def parse_k(value) -> int:
    """k from a form (string) or JSON (int): an integer in 1..MAX_UI_K, else QueryError."""
    if isinstance(value, bool):
        raise QueryError(f"k must be an integer in 1..{MAX_UI_K}, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise QueryError(f"k must be an integer in 1..{MAX_UI_K}, got {value!r}") from None
    if not isinstance(value, int) or not 1 <= value <= MAX_UI_K:
        raise QueryError(f"k must be an integer in 1..{MAX_UI_K}, got {value!r}")
    return value
