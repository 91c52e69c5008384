"""The versioned model store used by publish (implementation in :mod:`core.store`).

It lives in core because both the indexer (writes versions) and serving (reads them)
need it, and stage packages never import each other.
"""

from core.store import (  # noqa: F401  (re-exported public API)
    CURRENT,
    LOCK,
    MANIFEST,
    MAX_CURRENT_BYTES,
    RUNS,
    VERSIONS,
    IntegrityError,
    PointerError,
    PublishConflictError,
    StoreBusyError,
    StoreError,
    StoreNotFoundError,
    VersionCollectedError,
    VersionExistsError,
    VersionNotFoundError,
    VersionStore,
    parse_current,
    utc_now,
)
