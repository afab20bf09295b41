"""Bounded before trusted: read a DICOM file without letting its sizes choose our memory.

One function, :func:`read_dataset`, is how every part of the node reads a
dataset it did not write (the SCP on the association thread, the worker, the
upload and the per-request reads). It behaves like :func:`pydicom.dcmread`
except for Deflated Explicit VR Little Endian (PS3.5 A.5): pydicom inflates the
whole dataset in one ``zlib.decompress`` call, so 306 KB on the wire can become
635 MB before anything is checked. Here the deflate stream is inflated in
chunks and refused as soon as it passes ``max_inflated_bytes``
(:class:`DatasetTooLarge`); a reader that needs only the header (``keep_bytes``)
keeps that much and counts the rest without holding it.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final, cast

from pydicom import dcmread
from pydicom.dataset import FileDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset as _pydicom_read_dataset
from pydicom.filereader import read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.errors import DicomNodeError

#: Largest image the node decodes by default (rows x columns); dicom_node.pixels.MAX_PIXELS.
DEFAULT_MAX_PIXELS: Final = 100_000_000
#: Room for everything but the pixels: a mammogram header is tens of KB; icons,
#: overlays and private blocks stay well within this.
HEADER_ALLOWANCE_BYTES: Final = 16 << 20
#: The most bytes a pixel takes in what the node decodes (Bits Allocated 16).
MAX_BYTES_PER_PIXEL: Final = 2
_INPUT_CHUNK: Final = 64 << 10
_OUTPUT_CHUNK: Final = 1 << 20
#: Pixel Data, Float Pixel Data, Double Float Pixel Data (stop_before_pixels).
_PIXEL_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})


class DatasetTooLarge(DicomNodeError, ValueError):
    """A dataset larger than the limit; nothing beyond the limit was held in memory.

    A ``ValueError`` too, so callers that refuse unreadable files refuse this one.
    """


class DatasetUnreadable(DicomNodeError, ValueError):
    """A deflated dataset whose deflate stream is corrupt."""


def max_inflated_bytes(max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """The inflated-size cap that fits the largest image the node decodes, plus a header."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return max_pixels * MAX_BYTES_PER_PIXEL + HEADER_ALLOWANCE_BYTES


#: The default cap: 100 M pixels at 16 bits plus the header allowance (216 MiB).
DEFAULT_MAX_INFLATED_BYTES: Final = max_inflated_bytes()


def inflate_bounded(
    source: BinaryIO, *, max_bytes: int, keep_bytes: int | None = None
) -> tuple[DicomBytesIO, int]:
    """Inflate the raw deflate stream (RFC 1951) that ``source`` holds from its position.

    Returns the first ``keep_bytes`` inflated bytes (all when None), as a
    buffer positioned at its start, and the inflated total. Raises
    :class:`DatasetTooLarge` as soon as the total passes ``max_bytes``: no
    zlib call ever produces more than 1 MiB at a time, so memory stays within
    what is kept plus one chunk whatever the ratio.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    kept = DicomBytesIO()
    kept_bytes = 0
    total = 0
    limit = max_bytes if keep_bytes is None else min(keep_bytes, max_bytes)

    def take(chunk: bytes) -> None:
        nonlocal total, kept_bytes
        total += len(chunk)
        if total > max_bytes:
            raise DatasetTooLarge(
                f"the deflated dataset inflates to more than {max_bytes} bytes "
                f"(the limit for this node); refused after {total} bytes"
            )
        room = limit - kept_bytes
        if room > 0:
            kept_bytes += kept.write(chunk[:room] if room < len(chunk) else chunk)

    try:
        while not inflater.eof:
            data = source.read(_INPUT_CHUNK)
            if not data:
                break
            out = inflater.decompress(data, _OUTPUT_CHUNK)
            take(out)
            while inflater.unconsumed_tail and not inflater.eof:
                take(inflater.decompress(inflater.unconsumed_tail, _OUTPUT_CHUNK))
        take(inflater.flush())
    except zlib.error as exc:
        raise DatasetUnreadable(f"the deflated dataset is corrupt: {exc}") from exc
    kept.seek(0)
    return kept, total


def _open(source: Path | str | bytes | bytearray | memoryview | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source)), True
    if isinstance(source, str | os.PathLike):
        return open(source, "rb"), True  # closed by read_dataset
    return source, False


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def read_dataset(
    source: Path | str | bytes | bytearray | memoryview | BinaryIO,
    *,
    stop_before_pixels: bool = False,
    specific_tags: Sequence[int | str] | None = None,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
    keep_bytes: int | None = None,
) -> FileDataset:
    """:func:`pydicom.dcmread` with a deflated dataset inflated under a cap.

    ``keep_bytes`` (with ``stop_before_pixels`` or ``specific_tags``) keeps only
    the first bytes of an inflated dataset, enough for its header, while the
    whole is still counted against ``max_inflated_bytes``. Without it the
    stream is inflated twice: once to count, holding nothing, then to keep. Non-deflated
    transfer syntaxes are read by pydicom as they are.

    Raises :class:`DatasetTooLarge`, :class:`DatasetUnreadable`, and what
    :func:`pydicom.dcmread` raises (``InvalidDicomError``, ``OSError``, ...).
    """
    if keep_bytes is not None and not (stop_before_pixels or specific_tags):
        raise ValueError("keep_bytes needs stop_before_pixels or specific_tags")
    fh, owned = _open(source)
    try:
        start = fh.tell()
        meta = None
        preamble = None
        try:
            preamble = read_preamble(fh, False)
            # pydicom's own meta reader (pinned < 4): the group-2 elements only.
            from pydicom.filereader import _read_file_meta_info

            meta = _read_file_meta_info(fh)
        except Exception:  # noqa: BLE001 - not Part 10 or broken meta: dcmread says why
            meta = None
        if meta is None or meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            fh.seek(start)
            wanted = [Tag(t) for t in specific_tags] if specific_tags is not None else None
            return dcmread(fh, stop_before_pixels=stop_before_pixels, specific_tags=wanted)
        if keep_bytes is None:
            # Count first, holding nothing: a bomb costs CPU up to the cap, never memory.
            dataset_start = fh.tell()
            inflate_bounded(fh, max_bytes=max_inflated_bytes, keep_bytes=0)
            fh.seek(dataset_start)
        buffer, total = inflate_bounded(fh, max_bytes=max_inflated_bytes, keep_bytes=keep_bytes)
        kept = total if keep_bytes is None else min(total, keep_bytes)
        tags = None
        if specific_tags is not None:
            tags = [Tag(t) for t in specific_tags]
            tags.append(Tag(0x00080005))  # Specific Character Set, as dcmread adds it
        try:
            dataset = _pydicom_read_dataset(
                cast(BinaryIO, buffer),
                False,
                True,
                stop_when=_stop_at_pixels if stop_before_pixels else None,
                specific_tags=tags,  # type: ignore[arg-type]
            )
        except EOFError as exc:
            if kept < total:
                raise DatasetTooLarge(
                    f"the header of the deflated dataset is larger than {keep_bytes} bytes"
                ) from exc
            raise
        name = getattr(fh, "name", None)
        ds = FileDataset(
            name if isinstance(name, str) else buffer,
            dataset,
            preamble,
            meta,
            False,
            True,
        )
        ds.set_original_encoding(False, True, dataset._character_set)
        return ds
    finally:
        if owned:
            fh.close()
