"""Writes that no reader sees half-done: on a local disk a temporary name and a rename; on an object store one
PUT, which is atomic there (a move would be a server-side copy plus a delete: every object written twice)."""

from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem

from realfill.data import storage


def test_an_object_is_written_once_in_place_on_an_object_store(counting):
    storage.write_bytes("counting://bucket/run/a/b.bin", b"payload")
    assert counting["pipe_file"] == 1 and not {"mv", "copy", "cp_file", "rm", "rm_file"} & set(counting), \
        "one PUT: no temporary object, no copy, no delete"
    assert storage.read_bytes("counting://bucket/run/a/b.bin") == b"payload"
    assert len([key for key in MemoryFileSystem.store if "bucket/run" in key]) == 1, "and no other object"


def test_a_local_file_appears_whole_by_a_rename(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    moves = []
    real_mv = LocalFileSystem.mv
    monkeypatch.setattr(LocalFileSystem, "mv", lambda self, source, target, **kw: (moves.append((source, target)),
                                                                                    real_mv(self, source, target))[1])
    target = tmp_path / "deep" / "file.bin"
    storage.write_bytes(str(target), b"payload")
    assert target.read_bytes() == b"payload" and [path.name for path in target.parent.iterdir()] == ["file.bin"]
    ((source, destination),) = moves
    assert destination == str(target) and source.startswith(str(target.parent) + "/.tmp-")


def test_a_local_path_with_a_double_colon_is_a_path_not_a_url_chain(tmp_path):
    """fsspec reads `a::b` as URL chaining; a folder of that name is still a folder here."""
    from conftest import write_scene
    from realfill.data.scene import list_scenes, load_scene

    folder = tmp_path / "x::y"
    storage.write_bytes(str(folder / "file.bin"), b"payload")
    assert (folder / "file.bin").read_bytes() == b"payload" and storage.read_bytes(str(folder / "file.bin")) == \
        b"payload"
    assert storage.exists(str(folder)) and storage.list_dir(str(folder)) == ["file.bin"]
    write_scene(tmp_path / "scenes" / "x::y")
    write_scene(tmp_path / "scenes" / "plain", seed=1)
    assert [Path(uri).name for uri in list_scenes(str(tmp_path / "scenes"))] == ["plain", "x::y"]
    assert load_scene(str(tmp_path / "scenes" / "x::y")).scene_id == "x::y"
    storage.write_bytes("memory://chained/file", b"payload")
    assert storage.read_bytes("simplecache::memory://chained/file") == b"payload", "a URI that starts with a chain"


FULL_DISK = """
import resource, signal, sys
from realfill.data import storage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    storage.write_bytes(sys.argv[1], b"x" * 400_000)
except OSError as exc:
    print(type(exc).__name__, exc)
"""


def test_a_write_that_fails_names_the_object_and_leaves_no_temporary(tmp_path):
    """A disk that fills up mid-write: the error says what was being written, and no partial file stays."""
    import subprocess
    import sys

    target = tmp_path / "samples" / "seed-0000.png"
    result = subprocess.run([sys.executable, "-c", FULL_DISK, str(target)], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == f"StorageError writing {target}: File too large", result.stdout + result.stderr
    assert list(target.parent.iterdir()) == [], "the temporary of the failed write is removed"


def test_a_missing_object_is_named_with_what_was_being_done(s3, tmp_path):
    with pytest.raises(FileNotFoundError, match="^reading s3://realfill-test/nothing/here.png: "):
        storage.read_bytes("s3://realfill-test/nothing/here.png")
    with pytest.raises(FileNotFoundError, match=f"^listing {tmp_path}/absent: "):
        storage.list_dir(str(tmp_path / "absent"))


def test_an_output_in_a_bucket_that_does_not_exist_is_an_error_and_creates_no_bucket(s3):
    from realfill.data.lease import OutputLease

    with pytest.raises(FileNotFoundError, match=r"^s3://typo-bucket/run: the bucket s3://typo-bucket does not "
                                                r"exist \(realfill creates no bucket"):
        OutputLease("s3://typo-bucket/run").acquire()
    assert "typo-bucket" not in {bucket.rstrip("/") for bucket in s3.ls("")}, "no bucket was made"
    with OutputLease("s3://realfill-test/run"):
        assert s3.exists("realfill-test/run/.realfill-lease.json")


def test_s3_slowdowns_are_retried_and_a_persistent_one_names_the_object(faulty_s3):
    """A fault-injecting proxy in front of S3: two 503s on a manifest write are absorbed; a 503 on every try
    fails within seconds with one line naming the operation and the object."""
    import time

    from test_manifest import KEY_A, rows

    from realfill.data import manifest

    out = "s3://realfill-test/faulty"
    faulty_s3.fail("PUT", "/_journal/samples/", times=2)
    manifest.write_scene(out, *rows("s0", KEY_A))
    assert faulty_s3.failed == 2 and manifest.read_table(out, "scenes").num_rows == 1
    faulty_s3.fail("PUT", "/_journal/scenes/")
    started = time.perf_counter()
    with pytest.raises(OSError) as raised:
        manifest.write_scene(out, *rows("s1", KEY_A))
    assert str(raised.value) == (f"writing {out}/manifest/_journal/scenes/scene-s1.parquet: Please reduce your "
                                 f"request rate.")
    assert time.perf_counter() - started < 30
