from functools import partial
from pathlib import Path
from typing import BinaryIO

import pytest

from dicom_node.scu import Destination
from dicom_node.spool import (
    instance_path,
    remove_partial_files,
    write_atomically,
    write_together,
)
from dicom_node.status import Status
from dicom_node.uids import InvalidUIDError, checked_uid, is_valid_uid, is_valid_uid_root


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.1.2", "0", "2.25.1234567890"])
def test_valid_uids(uid: str) -> None:
    assert checked_uid(uid) == uid


@pytest.mark.parametrize(
    "uid", ["", "1..2", "1.02", "../../etc/passwd", "1.2/3", "1.2.3.", "a.b", "1" * 65, None, 12]
)
def test_invalid_uids_never_become_paths(uid: object, tmp_path: Path) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUIDError):
        instance_path(tmp_path, uid)  # type: ignore[arg-type]


def test_uid_root() -> None:
    assert is_valid_uid_root("1.2.826.0.1.3680043.8.498.")
    assert not is_valid_uid_root("1.2.826")
    assert not is_valid_uid_root("1.2." + "3" * 40 + ".")


def test_atomic_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "spool" / "1.2.3.dcm"

    def failing(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, failing)
    assert not target.exists() and list(target.parent.iterdir()) == []
    write_atomically(target, lambda fh: fh.write(b"whole"))
    assert target.read_bytes() == b"whole"
    (target.parent / ".incoming-x.part").write_bytes(b"left by a crash")
    (target.parent / ".incoming-other-x.part").write_bytes(b"another writer, still writing")
    assert remove_partial_files(target.parent, owner="other") == 1
    assert not (target.parent / ".incoming-other-x.part").exists()
    assert remove_partial_files(target.parent) == 1


def _write_bytes(data: bytes, fh: BinaryIO) -> None:
    fh.write(data)


def test_files_written_together_appear_all_or_none_and_fsync_once_per_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    folder = tmp_path / "outbox" / "7"

    def failing(fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"half")
        raise OSError("disk full")

    writes = {folder / "seg.dcm": lambda fh: fh.write(b"seg"), folder / "sr.dcm": failing}
    with pytest.raises(OSError, match="disk full"):
        write_together(writes, owner="w")
    assert list(folder.iterdir()) == []  # the first one was written, but never renamed
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    names = ("seg", "sr", "sc")
    paths = write_together({folder / f"{n}.dcm": partial(_write_bytes, n.encode()) for n in names})
    assert [p.read_bytes() for p in paths] == [n.encode() for n in names]
    assert sorted(p.name for p in folder.iterdir()) == ["sc.dcm", "seg.dcm", "sr.dcm"]
    assert len(synced) == 3 + 2  # each file, then the folder and the outbox, once
    with pytest.raises(ValueError, match="one folder"):
        write_together({tmp_path / "a": failing, folder / "b": failing})


def test_destination_parse() -> None:
    d = Destination.parse("ORTHANC@127.0.0.1:4242")
    assert (d.ae_title, d.host, d.port, d.name) == (
        "ORTHANC",
        "127.0.0.1",
        4242,
        "ORTHANC@127.0.0.1:4242",
    )
    for bad in ("ORTHANC@127.0.0.1", "@h:1", "A@h:0", "A@h:70000", "TOOLONGAETITLE1234@h:1"):
        with pytest.raises(ValueError, match="AET@HOST:PORT"):
            Destination.parse(bad)


def test_status_acknowledgement() -> None:
    assert Status.is_acknowledged(Status.SUCCESS)
    assert Status.is_acknowledged(Status.COERCION_OF_DATA_ELEMENTS)
    assert not Status.is_acknowledged(Status.OUT_OF_RESOURCES)
