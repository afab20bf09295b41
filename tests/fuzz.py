"""A fuzz-style generator of malformed DICOM files for robustness tests.

Each case is a file whose file meta is readable (so a peer can send its
dataset bytes as they are, pynetdicom's chunked send) and whose dataset is
mutated: wrong VRs, lengths past the end, truncated pixel data, absurd
sizes, missing or hostile UIDs, unknown transfer syntaxes, random bytes.
Seeded: the same seed gives the same 1,000 files.
"""

from __future__ import annotations

import copy
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import Dataset, dcmwrite
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.testkit.synthetic import synthetic_mammogram

MG = "1.2.840.10008.5.1.4.1.1.1.2"


@dataclass(frozen=True)
class FuzzCase:
    name: str
    path: Path
    sop_instance_uid: str


def _meta(sop_uid: str, ts: str = ExplicitVRLittleEndian) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    return meta


def _file(meta: FileMetaDataset, body: bytes) -> bytes:
    """Preamble + file meta + raw (possibly broken) dataset bytes."""
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return bytes(out.getvalue()) + body


def _body(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.file_meta = _meta(ds.SOPInstanceUID)
    dcmwrite(out, ds, enforce_file_format=True)
    data = out.getvalue()
    # Skip preamble (128) + 'DICM' + the file meta group.
    group_len = struct.unpack("<I", data[140:144])[0]
    return data[144 + group_len :]


def _mutations(rng: random.Random, base: Dataset) -> Iterator[tuple[str, str, bytes]]:
    """Yield (name, sop_uid, file bytes) forever."""
    kinds = [
        "flip",
        "truncate",
        "bad_vr",
        "long_length",
        "short_pixels",
        "huge_size",
        "no_sop_uid",
        "path_uid",
        "unknown_ts",
        "garbage",
        "zero_size",
        "bits",
    ]
    while True:
        kind = rng.choice(kinds)
        ds = copy.deepcopy(base)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        if kind == "short_pixels":
            ds.PixelData = ds.PixelData[: rng.randrange(0, len(ds.PixelData) // 2)]
        elif kind == "huge_size":
            ds.Rows, ds.Columns = rng.choice([(65535, 65535), (65535, 1), (40000, 40000)])
        elif kind == "zero_size":
            ds.Rows = 0
        elif kind == "bits":
            ds.BitsAllocated = rng.choice([1, 7, 12, 32, 64])
            ds.BitsStored = rng.choice([0, 3, 17, 40])
        body = _body(ds)
        meta = _meta(uid)
        if kind == "flip":
            data = bytearray(body)
            for _ in range(rng.randint(1, 40)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            body = bytes(data)
        elif kind == "truncate":
            body = body[: rng.randrange(0, len(body))]
        elif kind == "bad_vr":
            data = bytearray(body)
            for _ in range(rng.randint(1, 6)):
                at = rng.randrange(0, max(1, min(len(data) - 6, 600)))
                data[at + 4 : at + 6] = rng.choice([b"ZZ", b"\x00\x00", b"SQ", b"OB", b"UN"])
            body = bytes(data)
        elif kind == "long_length":
            data = bytearray(body)
            at = rng.randrange(0, max(1, min(len(data) - 8, 600)))
            data[at + 6 : at + 8] = b"\xff\xff"
            body = bytes(data) + struct.pack("<HHI", 0x7FE0, 0x0010, 0xFFFFFFF0)
        elif kind == "no_sop_uid":
            del ds.SOPInstanceUID
            body = _body_without_meta(ds, uid)
        elif kind == "path_uid":
            hostile = rng.choice(
                [
                    "../../etc/passwd",
                    "1.2.3/../../x",
                    "1.2.3.4\\..\\5",
                    "1.2.3.4;rm",
                    "1..2",
                    "1.2.3.4\x00x",
                ]
            )
            ds.SOPInstanceUID = hostile
            body = _body_without_meta(ds, hostile)
            meta = _meta(hostile)
            uid = hostile
        elif kind == "unknown_ts":
            meta = _meta(uid, rng.choice(["1.2.3.4.5.6", "1.2.840.10008.1.2.4.100"]))
        elif kind == "garbage":
            body = rng.randbytes(rng.randint(0, 4000))
        yield kind, uid, _file(meta, body)


def _body_without_meta(ds: Dataset, uid: str) -> bytes:
    out = BytesIO()
    ds.file_meta = _meta(uid if uid else generate_uid())
    dcmwrite(out, ds, enforce_file_format=False, little_endian=True, implicit_vr=False)
    data = out.getvalue()
    if data[128:132] == b"DICM":
        group_len = struct.unpack("<I", data[140:144])[0]
        return data[144 + group_len :]
    return data


def fuzz_cases(folder: Path, count: int, *, seed: int = 1234) -> list[FuzzCase]:
    """Write ``count`` malformed files to ``folder``; same seed, same files."""
    rng = random.Random(seed)
    base = synthetic_mammogram(rows=96, columns=80, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, (kind, uid, data) in zip(range(count), _mutations(rng, base), strict=False):
        path = folder / f"{i:04d}-{kind}.dcm"
        path.write_bytes(data)
        cases.append(FuzzCase(name=kind, path=path, sop_instance_uid=uid))
    return cases
