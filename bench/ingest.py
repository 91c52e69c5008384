"""The ingest stage alone on a dataset folder, for wall time, CPU time and peak memory.

    .venv/bin/twotower data synth-interactions --out /tmp/ingest10m --items 1000000 --users 500000 --interactions 10000000
    /usr/bin/time -v .venv/bin/python bench/ingest.py /tmp/ingest10m /tmp/ingest10m-out

Runs ``features.ingest.ingest`` with ``core/configs/synth-interactions.yaml`` (``data.path`` = the
folder; parquet, csv or jsonl tables) into the output folder and prints its stats as JSON.
``/usr/bin/time -v`` gives wall ("Elapsed"), CPU ("User" + "System") and peak RSS ("Maximum
resident set size"): the process does nothing else.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    from core.config import load_config
    from features.ingest import ingest

    data, out = args
    config = load_config(REPO / "core" / "configs" / "synth-interactions.yaml", [f"data.path={data}"])
    started = time.perf_counter()
    stats = ingest(config, out)
    print(json.dumps({"seconds": round(time.perf_counter() - started, 1), **stats}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
