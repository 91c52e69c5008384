"""The embed stage's embedding map (indexer/embedding_map.py) at catalog size: wall / CPU seconds and
peak RSS of ``write_embedding_map`` on a finished run's own transform and embeddings.

    .venv/bin/python bench/scale.py --items 1000000 --keep /tmp/scale-1m   # a kept run first
    .venv/bin/python bench/embedding_map.py --run-dir /tmp/scale-1m/1000000 --repeats 3

``--run-dir`` is a folder holding one pipeline run (the transform's and the embed stage's outputs
somewhere below it, as ``bench/scale.py --keep`` or ``twotower run`` leave them) and ``--config``
the config it ran with (the schema names the map's categorical). Each repeat rebuilds the map from the same
inputs in this process (median reported) and the map is written to a scratch folder, never into
the run. Prints one JSON line and writes ``bench/results/embedding_map-<UTC>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _one(pattern: str, root: Path) -> Path:
    """The single folder below ``root`` holding ``pattern`` (SystemExit naming both otherwise)."""
    found = sorted({p.parent for p in root.rglob(pattern)})
    if len(found) != 1:
        raise SystemExit(f"{root}: expected one folder with {pattern}, found {[str(f) for f in found]}")
    return found[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--config", default="synth-interactions", help="the run's config (bench/scale.py's by default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()

    from core.config import load_config
    from core.contracts import files as names
    from indexer.embed import write_embedding_map
    from indexer.embeddings import load_embeddings

    root = Path(args.run_dir)
    embeddings_dir = _one(names.ITEM_EMBEDDINGS_FILE, root)
    transformed_dir = _one(names.TRANSFORM_STATS_FILE, root)
    config = load_config(args.config)
    ids, matrix = load_embeddings(str(embeddings_dir))
    import tensorflow  # noqa: F401  (the map decodes TFRecords; the embed stage has TF loaded already)
    walls, cpus, sizes = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            # The map reads the query embeddings beside the item ones: give it the same folder's.
            for name in (names.QUERY_EMBEDDINGS_FILE,):
                if (embeddings_dir / name).exists():
                    (Path(out) / name).symlink_to(embeddings_dir / name)
            began, cpu = time.perf_counter(), time.process_time()
            write_embedding_map(config, str(transformed_dir), ids, matrix, out)
            walls.append(time.perf_counter() - began)
            cpus.append(time.process_time() - cpu)
            sizes.append(sum(p.stat().st_size for p in Path(out).iterdir() if not p.is_symlink()))
    result = {"command": " ".join([".venv/bin/python", "bench/embedding_map.py", *sys.argv[1:]]),
              "date_utc": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
              "n_items": len(ids), "dims": int(matrix.shape[1]), "repeats": args.repeats,
              "wall_s_median": round(statistics.median(walls), 3), "cpu_s_median": round(statistics.median(cpus), 3),
              "wall_s": [round(w, 3) for w in walls], "map_bytes": sizes[0],
              "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(result))
    out = Path(args.out_dir) / f"embedding_map-{result['date_utc']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
