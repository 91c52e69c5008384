"""A tiny staging folder in the layout of a published version (index/, items.parquet)."""

from __future__ import annotations


def staging_folder(tmp_path, name: str, payload: str = "x") -> str:
    folder = tmp_path / "staging" / name
    (folder / "index" / "scann").mkdir(parents=True)
    (folder / "index" / "scann" / "dataset.npy").write_bytes(payload.encode() * 100)
    (folder / "index" / "item_ids.txt").write_text("a\nb\n")
    (folder / "items.parquet").write_bytes(b"PAR1" + payload.encode())
    return str(folder)
