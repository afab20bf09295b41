"""Incoming C-STORE data sets written to the spool as they arrive, not held in memory.

pynetdicom collects each incoming data set in a ``BytesIO`` and the handler then joins
it with its file meta into one more ``bytes``: two copies of a 27 MB mammogram per
association, for as long as the handler runs. pynetdicom can instead write the data set
to a temporary file fragment by fragment (``_config.STORE_RECV_CHUNKED_DATASET``,
the handler gets ``event.dataset_path``), but that switch is process-wide and its file
goes to the system temporary folder. This module turns it on for the associations of the
AEs registered here only (:func:`stream_to`), and puts their files in the spool folder
under the writer's partial-file prefix (``dicom_node.spool``), so that:

- an instance that is stored becomes its spool file by a rename, not a second write
  (:func:`keep_received`);
- a data set that is refused or cut off is never a spool file: pynetdicom deletes the
  refused one after the handler; :func:`drop_partial` deletes one whose association
  ended mid-transfer; and ``remove_partial_files`` removes any left by a crash at the
  next start, as for the spool's own partial files.

Every other AE in the process (a test's peer, the node's SCU side) receives as pynetdicom
does by default. The hook is two attributes of pynetdicom 3.0 that the
decoder reads when a C-STORE's command set is complete
(``pynetdicom.dimse_messages``): the chunking switch and ``NamedTemporaryFile``.
``tests/integration/test_scp.py`` checks that a stored instance went this way, so a
pynetdicom that changes them fails there.
"""

from __future__ import annotations

import os
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO, Any

from pynetdicom import _config, dimse_messages

from dicom_node.spool import fsync_path, partial_prefix

#: AE -> (spool folder, writer name) for the AEs whose incoming data sets go to disk.
_FOLDERS: weakref.WeakKeyDictionary[Any, tuple[Path, str]] = weakref.WeakKeyDictionary()
_INSTALL_LOCK = threading.Lock()
_installed = False


def _folder_for_this_thread() -> tuple[Path, str] | None:
    """The registered folder of the association whose DUL thread is running, if any."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    ae = getattr(assoc, "ae", None)
    return _FOLDERS.get(ae) if ae is not None else None


class _ChunkedForRegisteredAes:
    """pynetdicom's chunking switch, true only on the DUL thread of a registered AE."""

    def __bool__(self) -> bool:
        return _folder_for_this_thread() is not None

    def __repr__(self) -> str:
        return "<True for the AEs registered by dicom_node.receive.stream_to>"


def _named_temporary_file(*args: Any, **kwargs: Any) -> IO[bytes]:
    """pynetdicom's temporary file, in the registered spool under the partial prefix."""
    target = _folder_for_this_thread()
    if target is not None:
        folder, writer = target
        kwargs.update(dir=folder, prefix=partial_prefix(writer), suffix=".part")
    return tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - pynetdicom closes it


def stream_to(ae: Any, spool_dir: Path, *, writer_name: str = "") -> None:
    """Have the associations of ``ae`` write incoming data sets into ``spool_dir``."""
    global _installed
    spool_dir.mkdir(parents=True, exist_ok=True)
    _FOLDERS[ae] = (spool_dir, writer_name)
    with _INSTALL_LOCK:
        if not _installed:
            _config.STORE_RECV_CHUNKED_DATASET = _ChunkedForRegisteredAes()  # type: ignore[assignment]
            dimse_messages.NamedTemporaryFile = _named_temporary_file  # type: ignore[attr-defined]
            _installed = True


def received_path(event: Any) -> Path | None:
    """The file that holds a C-STORE's data set, or None when it came in memory."""
    try:
        path = event.dataset_path
    except AttributeError:
        return None
    return Path(path) if path is not None else None


def keep_received(received: Path, path: Path) -> Path:
    """Make the received file ``path``, durably: fsync it, rename it, fsync the folder.

    The rename is within the spool folder; pynetdicom's deletion of its temporary name
    after the handler then finds nothing (it ignores that).
    """
    fsync_path(received)
    os.replace(received, path)
    fsync_path(path.parent)
    return path


def drop_partial(assoc: Any) -> bool:
    """Delete the file of a data set that was still arriving when ``assoc`` ended.

    Only deleted, not closed: the association's DUL thread may still hold it open.
    Returns whether there was one.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    path = getattr(message, "_data_set_path", None)
    if not isinstance(path, Path) or path.parent not in {f for f, _ in _FOLDERS.values()}:
        return False
    path.unlink(missing_ok=True)
    return True
