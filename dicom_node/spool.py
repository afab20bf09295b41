"""Durable instance files: temp file, fsync, rename (crash-safe), names from checked UIDs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import BinaryIO

from dicom_node.uids import checked_uid


def instance_path(folder: Path, sop_instance_uid: str, suffix: str = ".dcm") -> Path:
    """The file that holds one instance; the UID is validated, so no path tricks."""
    return folder / f"{checked_uid(sop_instance_uid, what='SOP Instance UID')}{suffix}"


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by its path (a folder: the entries made in it survive)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, write: Callable[[BinaryIO], object], *, owner: str = "") -> Path:
    """Write through ``write`` to a temp file in the same folder, fsync, then rename.

    A reader never sees a half-written file under ``path``: it is either absent
    or complete. The folder is fsynced too so the rename survives a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=partial_prefix(owner), suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return path


def write_together(
    writes: Mapping[Path, Callable[[BinaryIO], object]], *, owner: str = ""
) -> list[Path]:
    """:func:`write_atomically` for several files of one new folder, with fewer fsyncs.

    Every file is written to a temp file and fsynced; only when all are written are they
    renamed into place, and then the folder and its parent (which holds the folder's new
    entry) are fsynced once each, instead of the folder once per file. A failure before
    the renames leaves none of the files (their temp files removed).
    """
    folders = {path.parent for path in writes}
    if len(folders) != 1:
        raise ValueError("write_together writes into one folder")
    (folder,) = folders
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, Path]] = []
    try:
        for path, write in writes.items():
            fd, tmp_name = tempfile.mkstemp(
                prefix=partial_prefix(owner), suffix=".part", dir=folder
            )
            written.append((tmp_name, path))
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
    except BaseException:
        for tmp_name, _ in written:
            Path(tmp_name).unlink(missing_ok=True)
        raise
    for tmp_name, path in written:
        os.replace(tmp_name, path)
    for directory in (folder, folder.parent):
        fsync_path(directory)
    return [path for _, path in written]


def partial_prefix(owner: str) -> str:
    """Temp names carry the writer's name, so a process cleans up only its own."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in owner)
    return f".incoming-{safe}-" if safe else ".incoming-"


def remove_partial_files(folder: Path, *, owner: str = "") -> int:
    """Delete this writer's temp files left by a crash mid-write; returns how many.

    Several processes may share a spool: one never removes another's
    in-flight temp file.
    """
    count = 0
    if folder.is_dir():
        for leftover in folder.glob(f"{partial_prefix(owner)}*.part"):
            leftover.unlink(missing_ok=True)
            count += 1
    return count
