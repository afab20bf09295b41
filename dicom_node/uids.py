"""UID checks: a UID from the network becomes a file name only after validation."""

from __future__ import annotations

import re

from dicom_node.errors import DicomNodeError

# PS3.5 9.1: components of digits separated by '.', no leading zeros, at most 64 chars.
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUIDError(DicomNodeError):
    """A UID that does not follow PS3.5 9.1 (and so must not become a path)."""


def is_valid_uid(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def checked_uid(value: object, *, what: str = "UID") -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUIDError`."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise InvalidUIDError(f"{what} {shown} is not a valid DICOM UID (PS3.5 9.1)")
    return str(value)


def is_valid_uid_root(value: str) -> bool:
    """A prefix for generated UIDs: a valid UID followed by '.', short enough to extend."""
    return value.endswith(".") and len(value) <= 40 and is_valid_uid(value[:-1])
