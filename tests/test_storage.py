"""Writes that no reader sees half-done: on a local disk a temporary name and a rename; on an object store one
PUT, which is atomic there (a move would be a server-side copy plus a delete: every object written twice)."""

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
