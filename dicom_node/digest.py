"""The content of a stored instance as one hash: same dataset, same digest.

The spool file is what the SCP wrote: a preamble, the File Meta Information
(PS3.10 7.1) that pynetdicom builds for each association (it names the
sender's AE title and implementation) and the dataset as it arrived. Only the
dataset counts, so an instance that a PACS sends again unchanged, from
whichever AE, has the digest it had.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

_PREAMBLE = 128 + 4  # 128 bytes, then b"DICM"
_GROUP_LENGTH_TAG = b"\x02\x00\x00\x00UL\x04\x00"  # (0002,0000) UL, length 4, explicit VR LE


def dataset_offset(head: bytes) -> int:
    """Where the dataset starts after the file meta group, or 0 when that cannot be told."""
    if len(head) < _PREAMBLE + 12 or head[128:132] != b"DICM":
        return 0
    if head[_PREAMBLE : _PREAMBLE + 8] != _GROUP_LENGTH_TAG:
        return 0
    (group_length,) = struct.unpack("<I", head[_PREAMBLE + 8 : _PREAMBLE + 12])
    return _PREAMBLE + 12 + group_length


def dataset_digest(path: Path) -> str:
    """SHA-256 (hex) of the dataset in a DICOM file, file meta excluded.

    A file without a recognisable meta group is hashed whole.
    """
    with path.open("rb") as fh:
        head = fh.read(_PREAMBLE + 12)
        fh.seek(dataset_offset(head))
        return hashlib.file_digest(fh, "sha256").hexdigest()
