"""Stage contracts: the on-disk names stages exchange (:mod:`core.contracts.files`) and the typed
JSON documents they hand each other (:mod:`core.contracts.records`), each defined once.

Both are re-exported here: ``from core import contracts; contracts.METRICS_FILE``.
"""

from core.contracts.files import *  # noqa: F401,F403
from core.contracts.files import ALL_NAMES, check_split, heldout_tower_dir, run_record_file, split_pattern, \
    table_file, tower_dir, vocab_file  # noqa: F401
from core.contracts.records import (ContractError, Document, EvalMetrics, RunSummary, StageError,  # noqa: F401
                                    StageRecord, VersionManifest, parse_document, read_document, read_manifest,
                                    read_metrics, read_stage_record, read_summary, write_manifest, write_metrics,
                                    write_stage_error, write_stage_record, write_summary)
