"""Local backend of core.storage: atomic writes, compare-and-swap, tree copies."""

import os

import pytest

from core import storage


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = str(tmp_path / "a" / "b.txt")
    storage.write_text(target, "one")
    storage.write_text(target, "two")
    assert storage.read_text(target) == "two"
    assert os.listdir(tmp_path / "a") == ["b.txt"]


def test_compare_and_swap(tmp_path):
    pointer = str(tmp_path / "CURRENT")
    storage.write_bytes_if_generation(pointer, b"v1", expected=None)
    gen = storage.generation(pointer)
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes_if_generation(pointer, b"v2", expected=None)  # must-not-exist fails
    storage.write_bytes(pointer, b"v1")  # someone else rewrote it (same content, same instant)
    assert storage.generation(pointer) != gen
    with pytest.raises(storage.PreconditionFailed):
        storage.write_bytes_if_generation(pointer, b"v2", expected=gen)
    assert storage.read_text(pointer) == "v1"
    storage.write_bytes_if_generation(pointer, b"v3", expected=storage.generation(pointer))
    assert storage.read_text(pointer) == "v3"
    # the lock file stays (a kernel flock on it is what serialises writers) and is free again
    storage.write_bytes_if_generation(pointer, b"v4", expected=storage.generation(pointer))
    assert storage.read_text(pointer) == "v4"


def test_tree_copy_and_listing(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "x.txt").write_text("x")
    (src / "sub" / "y.txt").write_text("y")
    rels = storage.upload_tree(str(src), str(tmp_path / "dst"))
    assert sorted(rels) == ["sub/y.txt", "x.txt"]
    assert storage.list_children(str(tmp_path / "dst")) == ["sub", "x.txt"]
    assert storage.read_text(storage.join(str(tmp_path / "dst"), "sub", "y.txt")) == "y"
    assert storage.download_tree(str(src), "/unused") == str(src)


def test_gcs_paths_join_and_split():
    assert storage.join("gs://b/prefix/", "versions", "v1") == "gs://b/prefix/versions/v1"
    assert storage.is_gcs("gs://b/x") and not storage.is_gcs("/tmp/x")


def test_atomic_writes_get_the_mode_open_would_give_not_mkstemps_0600(tmp_path):
    """A store published by one user is read by a query service running as another (the image's
    non-root user): CURRENT and manifests must be as readable as any file written with open()."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        storage.write_bytes(str(tmp_path / "CURRENT"), b"v1")
        with open(tmp_path / "plain", "wb") as fh:
            fh.write(b"v1")
        os.umask(0o077)
        storage.write_bytes(str(tmp_path / "private"), b"v1")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)  # noqa: E731
    assert mode("CURRENT") == mode("plain") == 0o644
    assert mode("private") == 0o600  # a stricter umask is honoured
