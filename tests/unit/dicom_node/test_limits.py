"""Bounded before trusted (issue 12, findings 1 and 2): bombs refused before they allocate.

Each test prints its figure: bytes on the wire, bytes inflated before the
refusal, and the peak of memory traced (tracemalloc) or resident (ru_maxrss).
"""

from __future__ import annotations

import io
import tracemalloc

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.codestream import MAX_J2K_TILES, CodestreamError, check_frame, rle_segments
from dicom_node.limits import (
    HEADER_ALLOWANCE_BYTES,
    DatasetTooLarge,
    max_inflated_bytes,
    read_dataset,
)
from dicom_node.pixels import PixelDataError, display_image
from service.testkit.synthetic import synthetic_mammogram
from tests.hostile import (
    deflate_bomb,
    lying_jpeg2000,
    lying_jpeg_ls,
    rle_bomb,
    rss_peak_mb,
    tiled_jpeg2000,
)

BOMB_BYTES = 600 << 20  # as measured in the issue: 306 KB inflating to 635 MB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return deflate_bomb(BOMB_BYTES)


def test_deflate_bomb_is_refused_while_it_inflates(bomb: bytes) -> None:
    cap = 64 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DatasetTooLarge, match="inflates to more than") as refused:
            read_dataset(bomb, max_inflated_bytes=cap)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"\ndeflate bomb: {len(bomb)} bytes on the wire claiming {BOMB_BYTES >> 20} MiB; "
        f"cap {cap >> 20} MiB; traced peak {peak / 2**20:.1f} MiB; {refused.value}"
    )
    assert peak < 16 << 20  # counted first, holding nothing


def test_deflate_bomb_header_read_keeps_only_the_header(bomb: bytes) -> None:
    """The SCP's read: the whole stream counted against the cap, only the header kept."""
    tracemalloc.start()
    try:
        ds = read_dataset(
            bomb,
            stop_before_pixels=True,
            max_inflated_bytes=BOMB_BYTES + (1 << 20),
            keep_bytes=HEADER_ALLOWANCE_BYTES,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(
        f"\nheader read of a {BOMB_BYTES >> 20} MiB inflated dataset: "
        f"traced peak {peak / 2**20:.1f} MiB"
    )
    assert ds.Modality == "MG" and "PixelData" not in ds
    assert peak < HEADER_ALLOWANCE_BYTES + (8 << 20)


def test_deflate_bomb_default_cap_fits_max_pixels(bomb: bytes) -> None:
    with pytest.raises(DatasetTooLarge):
        read_dataset(bomb, max_inflated_bytes=max_inflated_bytes(1_000_000))
    assert max_inflated_bytes(1_000_000) == 2_000_000 + HEADER_ALLOWANCE_BYTES


def test_deflated_dataset_within_the_cap_reads_as_pydicom_does() -> None:
    ds = synthetic_mammogram(rows=64, columns=48, transfer_syntax=DeflatedExplicitVRLittleEndian)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    ours = read_dataset(buffer.getvalue())
    theirs = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    assert ours.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert ours.PixelData == theirs.PixelData and ours.SOPInstanceUID == theirs.SOPInstanceUID
    assert (display_image(ours).pixels == display_image(theirs).pixels).all()
    only = read_dataset(
        buffer.getvalue(),
        specific_tags=["PatientID"],
        stop_before_pixels=True,
        keep_bytes=HEADER_ALLOWANCE_BYTES,
    )
    assert only.PatientID == ds.PatientID and "Rows" not in only


def test_corrupt_deflate_stream_is_a_value_error() -> None:
    ds = synthetic_mammogram(rows=16, columns=16, transfer_syntax=DeflatedExplicitVRLittleEndian)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = bytearray(buffer.getvalue())
    data[-200:-100] = b"\xff" * 100
    with pytest.raises(ValueError):
        read_dataset(bytes(data))


# --- compressed pixel data ---------------------------------------------------------


def _refused(ds: pydicom.Dataset, match: str) -> str:
    before = rss_peak_mb()
    with pytest.raises(PixelDataError, match=match) as refused:
        display_image(ds)
    growth = rss_peak_mb() - before
    assert "refused before decoding" in str(refused.value)
    return f"peak RSS growth {growth:.1f} MB; {refused.value}"


def test_jpeg2000_claiming_30000_squared_in_512_squared_is_refused() -> None:
    print("\nJPEG 2000:", _refused(lying_jpeg2000(), "declares 30000x30000 pixels"))


def test_jpeg2000_claiming_65535_squared_is_refused() -> None:
    ds = lying_jpeg2000(65535, 65535)
    print("\nJPEG 2000 65535^2:", _refused(ds, "declares 65535x65535"))


def test_jpeg2000_with_too_many_tiles_is_refused() -> None:
    print("\nJPEG 2000 1x1 tiles:", _refused(tiled_jpeg2000(1), f"at most {MAX_J2K_TILES}"))


def test_jpeg_ls_claiming_30000_squared_in_512_squared_is_refused() -> None:
    print("\nJPEG-LS:", _refused(lying_jpeg_ls(), "JPEG-LS codestream declares 30000x30000"))


def test_rle_segment_expanding_64_to_1_is_refused() -> None:
    ds = rle_bomb(64 << 20)
    print("\nRLE 64:1:", _refused(ds, "RLE segment 1 decodes to more than 262144 bytes"))


def test_honest_codestreams_pass_the_check() -> None:
    for ts in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"):
        ds = synthetic_mammogram(rows=64, columns=48, transfer_syntax=ts)
        assert display_image(ds).pixels.shape == (64, 48)


def test_codestream_header_disagreeing_with_bits_or_components() -> None:
    ds = synthetic_mammogram(rows=64, columns=48, transfer_syntax="1.2.840.10008.1.2.4.90")
    frame = pydicom.encaps.get_frame(ds.PixelData, 0, number_of_frames=1)
    with pytest.raises(CodestreamError, match="Bits Allocated 8"):
        check_frame(frame, rows=64, columns=48, samples=1, bits_allocated=8)
    with pytest.raises(CodestreamError, match="3 \\(Samples per Pixel\\)"):
        check_frame(frame, rows=64, columns=48, samples=3, bits_allocated=16)
    with pytest.raises(CodestreamError, match="not a JPEG"):
        check_frame(b"\x00" * 64, rows=64, columns=48, samples=1, bits_allocated=16)


def test_rle_header_checks() -> None:
    with pytest.raises(CodestreamError, match="declares 3 segments, expected 2"):
        rle_segments(b"\x03" + b"\x00" * 63, expected=2)
    with pytest.raises(CodestreamError, match="shorter than its 64-byte header"):
        rle_segments(b"\x01\x00", expected=1)
