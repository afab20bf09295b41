"""What a compressed frame says about itself, read before any decoder allocates for it.

A decoder sizes its output from the codestream, not from the dataset: a
145-byte JPEG 2000 codestream can claim 65535 x 65535 inside a 64 x 64
dataset, and an RLE segment can expand 64:1 past the frame. The functions here
parse only the headers (JPEG 2000 SIZ, ISO 15444-1 A.5.1; JPEG SOFn, ISO
10918-1 B.2.2; JPEG-LS SOF55 and LSE, ISO 14495-1 C.2.2 and C.2.4.1.4; the
RLE header, PS3.5 G.5) and :func:`check_frame` refuses a frame whose size,
components or precision disagree with Rows, Columns, Samples per Pixel and
Bits Allocated, with :class:`CodestreamError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

#: JPEG 2000 allows 65535 tiles; each costs the decoder kilobytes before any pixel.
MAX_J2K_TILES: Final = 4096
_JP2_SIGNATURE: Final = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ: Final = b"\xff\x4f\xff\x51"
_JPEG_SOI: Final = b"\xff\xd8"
#: SOFn markers of ISO 10918-1 (not DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55 (F7).
_SOF_MARKERS: Final = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
_SOS: Final = 0xDA
_LSE: Final = 0xF8
_STANDALONE: Final = frozenset({0x01, *range(0xD0, 0xD9)})
_MAX_MARKER_SEGMENTS: Final = 4096
_MAX_JP2_BOXES: Final = 256
RLE_HEADER_BYTES: Final = 64


class CodestreamError(ValueError):
    """A compressed frame that contradicts its dataset or cannot be parsed; says why."""


@dataclass(frozen=True)
class FrameHeader:
    """The image a codestream declares: what its decoder will allocate for."""

    kind: str
    rows: int
    columns: int
    components: int
    precision: int
    tiles: int = 1


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise CodestreamError("the codestream ends inside its header")
    return int(struct.unpack_from(">H", data, offset)[0])


def _u32(data: bytes, offset: int) -> int:
    if offset + 4 > len(data):
        raise CodestreamError("the codestream ends inside its header")
    return int(struct.unpack_from(">L", data, offset)[0])


def _j2k_codestream(frame: bytes) -> bytes:
    """The contiguous codestream: the frame itself, or the jp2c box of a JP2 file."""
    if frame.startswith(_J2K_SOC_SIZ):
        return frame
    offset = 0
    for _ in range(_MAX_JP2_BOXES):
        length = _u32(frame, offset)
        box = frame[offset + 4 : offset + 8]
        header = 8
        if length == 1:
            if offset + 16 > len(frame):
                raise CodestreamError("the JP2 file ends inside a box header")
            length = int(struct.unpack_from(">Q", frame, offset + 8)[0])
            header = 16
        elif length == 0:
            length = len(frame) - offset
        if box == b"jp2c":
            return frame[offset + header : offset + length]
        if length < header:
            raise CodestreamError("a JP2 box has an invalid length")
        offset += length
        if offset >= len(frame):
            break
    raise CodestreamError("the JP2 file has no codestream (jp2c) box")


def jpeg2000_header(frame: bytes) -> FrameHeader:
    """Image size, components, precision and tiles from the SIZ marker (ISO 15444-1 A.5.1)."""
    code = _j2k_codestream(frame)
    if not code.startswith(_J2K_SOC_SIZ):
        raise CodestreamError("the JPEG 2000 codestream does not start with SOC and SIZ")
    # SOC(2) SIZ(2) Lsiz(2) Rsiz(2), then 8 x 32-bit sizes, Csiz(2), 3 bytes per component.
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz = (
        _u32(code, 8 + 4 * i) for i in range(8)
    )
    components = _u16(code, 40)
    if components < 1:
        raise CodestreamError("the JPEG 2000 SIZ marker declares no components")
    ssiz = code[42] if len(code) > 44 else None
    if ssiz is None:
        raise CodestreamError("the codestream ends inside its header")
    xrsiz, yrsiz = code[43], code[44]
    if xosiz >= xsiz or yosiz >= ysiz or xtsiz == 0 or ytsiz == 0:
        raise CodestreamError("the JPEG 2000 SIZ marker declares an empty image or tile")
    if xtosiz > xosiz or ytosiz > yosiz or xrsiz != 1 or yrsiz != 1:
        raise CodestreamError("the JPEG 2000 SIZ marker declares an unsupported layout")
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    return FrameHeader(
        kind="JPEG 2000",
        rows=ysiz - yosiz,
        columns=xsiz - xosiz,
        components=components,
        precision=(ssiz & 0x7F) + 1,
        tiles=tiles,
    )


def jpeg_header(frame: bytes) -> FrameHeader:
    """The SOFn (ISO 10918-1 B.2.2) or SOF55 (ISO 14495-1 C.2.2) frame header.

    A JPEG-LS LSE marker of ID 4 (oversize dimensions) replaces the frame's
    sizes, as the decoder would.
    """
    if not frame.startswith(_JPEG_SOI):
        raise CodestreamError("the JPEG codestream does not start with SOI")
    offset = 2
    header: FrameHeader | None = None
    for _ in range(_MAX_MARKER_SEGMENTS):
        if offset + 2 > len(frame):
            break
        if frame[offset] != 0xFF:
            raise CodestreamError(f"no JPEG marker at byte {offset} of the codestream")
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte (B.1.1.2)
            offset += 1
            continue
        if marker in _STANDALONE:
            offset += 2
            continue
        length = _u16(frame, offset + 2)
        if length < 2:
            raise CodestreamError("a JPEG marker segment has an invalid length")
        body = offset + 4
        if marker in _SOF_MARKERS:
            kind = "JPEG-LS" if marker == 0xF7 else "JPEG"
            header = FrameHeader(
                kind=kind,
                rows=_u16(frame, body + 1),
                columns=_u16(frame, body + 3),
                components=frame[body + 5] if body + 5 < len(frame) else 0,
                precision=frame[body],
            )
        elif marker == _LSE and header is not None and body < len(frame) and frame[body] == 4:
            width = frame[body + 1] if body + 1 < len(frame) else 0
            if not 1 <= width <= 4 or body + 2 + 2 * width > len(frame):
                raise CodestreamError("a JPEG-LS oversize-dimension LSE marker is invalid")
            rows = int.from_bytes(frame[body + 2 : body + 2 + width], "big")
            columns = int.from_bytes(frame[body + 2 + width : body + 2 + 2 * width], "big")
            header = FrameHeader(header.kind, rows, columns, header.components, header.precision)
        elif marker == _SOS:
            break
        offset += 2 + length
    if header is None:
        raise CodestreamError("the JPEG codestream has no frame header (SOF) before its scan")
    return header


def codestream_header(frame: bytes) -> FrameHeader:
    """The header of a JPEG, JPEG-LS or JPEG 2000 frame, told apart by its first bytes."""
    if frame.startswith(_JPEG_SOI):
        return jpeg_header(frame)
    if frame.startswith(_J2K_SOC_SIZ) or frame.startswith(_JP2_SIGNATURE):
        return jpeg2000_header(frame)
    raise CodestreamError("the frame is not a JPEG, JPEG-LS or JPEG 2000 codestream")


def check_frame(
    frame: bytes, *, rows: int, columns: int, samples: int, bits_allocated: int
) -> FrameHeader:
    """Refuse a codestream whose declared image is not the dataset's (before decoding)."""
    header = codestream_header(frame)
    what = f"the {header.kind} codestream"
    if (header.rows, header.columns) != (rows, columns):
        raise CodestreamError(
            f"{what} declares {header.rows}x{header.columns} pixels, "
            f"the dataset {rows}x{columns} (Rows x Columns)"
        )
    if header.components != samples:
        raise CodestreamError(
            f"{what} declares {header.components} components, "
            f"the dataset {samples} (Samples per Pixel)"
        )
    if not 1 <= header.precision <= bits_allocated:
        raise CodestreamError(
            f"{what} declares {header.precision}-bit samples, "
            f"more than Bits Allocated {bits_allocated}"
        )
    if header.tiles > MAX_J2K_TILES:
        raise CodestreamError(f"{what} declares {header.tiles} tiles (at most {MAX_J2K_TILES})")
    return header


def rle_segments(frame: bytes, *, expected: int) -> list[bytes]:
    """The segments of an RLE frame (PS3.5 G.5), after checking its header."""
    if len(frame) < RLE_HEADER_BYTES:
        raise CodestreamError("the RLE frame is shorter than its 64-byte header")
    count, *offsets = struct.unpack_from("<16L", frame, 0)
    if count != expected:
        raise CodestreamError(f"the RLE header declares {count} segments, expected {expected}")
    used = offsets[:count]
    if used[0] != RLE_HEADER_BYTES:
        raise CodestreamError("the first RLE segment does not follow the header")
    ends = [*used[1:], len(frame)]
    if any(end <= start for start, end in zip(used, ends, strict=True)) or ends[-1] > len(frame):
        raise CodestreamError("the RLE segment offsets are out of order or past the frame")
    return [frame[start:end] for start, end in zip(used, ends, strict=True)]


def check_rle(frame: bytes, *, rows: int, columns: int, samples: int, bits_allocated: int) -> None:
    """Refuse an RLE frame whose header is wrong or whose segments decode past the frame.

    Each segment is decoded, with pylibjpeg-rle, into a buffer one byte larger
    than the rows x columns it must fill: if that succeeds the segment would
    expand past the frame. Memory stays at one frame whatever the segment says.
    """
    segments = rle_segments(frame, expected=samples * (bits_allocated // 8))
    pixels = rows * columns
    try:
        from rle.rle import decode_frame  # pylibjpeg-rle: bounded output
    except ImportError:  # pragma: no cover - a declared dependency
        return
    one_segment = struct.pack("<16L", 1, RLE_HEADER_BYTES, *([0] * 14))
    for index, segment in enumerate(segments, start=1):
        try:
            decode_frame(one_segment + segment, pixels + 1, 8, "<")
        except ValueError:
            continue  # decodes to at most rows x columns: the decoder's own checks follow
        raise CodestreamError(
            f"RLE segment {index} decodes to more than {pixels} bytes ({rows}x{columns})"
        )
