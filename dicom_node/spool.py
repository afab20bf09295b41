"""Durable instance files: temp file, fsync, rename (crash-safe), names from checked UIDs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dicom_node.uids import checked_uid


def instance_path(folder: Path, sop_instance_uid: str, suffix: str = ".dcm") -> Path:
    """The file that holds one instance; the UID is validated, so no path tricks."""
    return folder / f"{checked_uid(sop_instance_uid, what='SOP Instance UID')}{suffix}"


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
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


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
