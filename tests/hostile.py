"""Hostile inputs for the "bounded before trusted" tests (issue 12): bombs and liars.

Each builder makes a small object that claims, or expands to, far more than
it is: a deflate bomb, codestreams whose headers claim 30000 x 30000 inside a
512 x 512 dataset, an RLE segment expanding 64:1. Nothing here is large on disk.
"""

from __future__ import annotations

import io
import resource
import struct
import zlib

from pydicom import Dataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from service.testkit.synthetic import synthetic_mammogram

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def rss_peak_mb() -> float:
    """This process's peak resident set so far, in MB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def deflate_bomb(inflated_bytes: int, *, uid: str | None = None) -> bytes:
    """A Part 10 file, Deflated Explicit VR Little Endian, whose Pixel Data inflates to zeros.

    The deflate stream is made in chunks, so building it needs no more memory
    than the result (about inflated_bytes / 1000).
    """
    header = Dataset()
    header.SOPClassUID = MG_FOR_PRESENTATION
    header.SOPInstanceUID = uid or generate_uid()
    header.StudyInstanceUID = generate_uid()
    header.SeriesInstanceUID = generate_uid()
    header.Modality = "MG"
    header.Rows, header.Columns = 512, 512
    header.SamplesPerPixel, header.PhotometricInterpretation = 1, "MONOCHROME2"
    header.BitsAllocated, header.BitsStored, header.HighBit, header.PixelRepresentation = (
        16,
        12,
        11,
        0,
    )
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, header)
    pixels = inflated_bytes - len(body.getvalue()) - 12
    pixels -= pixels % 2
    element = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, pixels)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = io.BytesIO()
    out.write(deflater.compress(body.getvalue() + element))
    zeros = bytes(1 << 20)
    left = pixels
    while left:
        step = min(left, len(zeros))
        out.write(deflater.compress(zeros[:step]))
        left -= step
    out.write(deflater.flush())
    # File meta from pydicom, then the deflate stream as the dataset (PS3.5 A.5).
    meta_only = Dataset()
    meta_only.SOPClassUID = header.SOPClassUID
    meta_only.SOPInstanceUID = header.SOPInstanceUID
    meta_only.ensure_file_meta()
    meta_only.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta_only.file_meta.MediaStorageSOPClassUID = header.SOPClassUID
    meta_only.file_meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    meta = io.BytesIO()
    meta.write(b"\x00" * 128 + b"DICM")
    from pydicom.filewriter import write_file_meta_info

    write_file_meta_info(meta, meta_only.file_meta, enforce_standard=True)
    return meta.getvalue() + out.getvalue()


def _patch(frame: bytes, offset: int, fmt: str, *values: int) -> bytes:
    patched = bytearray(frame)
    struct.pack_into(fmt, patched, offset, *values)
    return bytes(patched)


def lying_jpeg2000(claim_rows: int = 30000, claim_columns: int = 30000, **kw: object) -> Dataset:
    """A 512 x 512 JPEG 2000 Lossless dataset whose SIZ marker claims another size."""
    ds = synthetic_mammogram(
        rows=512, columns=512, masses=(), transfer_syntax="1.2.840.10008.1.2.4.90", **kw
    )  # type: ignore[arg-type]
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    # SOC(2) SIZ(2) Lsiz(2) Rsiz(2) Xsiz(4) Ysiz(4): offsets 8 and 12 (ISO 15444-1 A.5.1).
    ds.PixelData = encapsulate([_patch(frame, 8, ">LL", claim_columns, claim_rows)])
    return ds


def tiled_jpeg2000(tile: int = 1) -> Dataset:
    """A 512 x 512 JPEG 2000 dataset whose SIZ marker claims tile x tile tiles."""
    ds = synthetic_mammogram(
        rows=512, columns=512, masses=(), transfer_syntax="1.2.840.10008.1.2.4.90"
    )
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([_patch(frame, 24, ">LL", tile, tile)])
    return ds


def lying_jpeg_ls(claim_rows: int = 30000, claim_columns: int = 30000) -> Dataset:
    """A 512 x 512 JPEG-LS Lossless dataset whose SOF55 frame header claims another size."""
    ds = synthetic_mammogram(
        rows=512, columns=512, masses=(), transfer_syntax="1.2.840.10008.1.2.4.80"
    )
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    sof = frame.index(b"\xff\xf7")
    # FF F7, Lf(2), P(1), Y(2), X(2) (ISO 14495-1 C.2.2).
    ds.PixelData = encapsulate([_patch(frame, sof + 5, ">HH", claim_rows, claim_columns)])
    return ds


def rle_bomb(expansion_bytes: int = 64 << 20) -> Dataset:
    """A 512 x 512, 16-bit RLE dataset whose first segment expands 64:1 to expansion_bytes.

    Each two-byte PackBits run (0x81, value) repeats its value 128 times (PS3.5 G.3.1).
    """
    ds = synthetic_mammogram(
        rows=512, columns=512, masses=(), transfer_syntax="1.2.840.10008.1.2.5"
    )
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    count, *offsets = struct.unpack_from("<16L", frame, 0)
    second = frame[offsets[1] :]
    bomb = b"\x81\x00" * (expansion_bytes // 128)
    header = struct.pack("<16L", 2, 64, 64 + len(bomb), *([0] * 13))
    ds.PixelData = encapsulate([header + bomb + second])
    return ds


class RssSampler:
    """Samples this process's current resident set (/proc/self/statm) every few ms.

    ``growth_mb`` is the largest sample minus the first: what an attack cost,
    unlike ru_maxrss, which an earlier test's peak can hide.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline = self.current_mb()
        self.peak = self.baseline

    def current_mb(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.current_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current_mb())

    @property
    def growth_mb(self) -> float:
        return self.peak - self.baseline
