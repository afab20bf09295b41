"""Result UIDs are derived, not random: a source sent again gives the objects it gave."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.digest import dataset_digest
from dicom_node.seg import build_segmentation
from dicom_node.uids import is_valid_uid
from tests.synthetic import (
    EXAMPLE_UID_ROOT,
    Mass,
    example_provenance,
    mass_mask,
    synthetic_mammogram,
)

KINDS = ("seg.series", "seg.instance", "sc.series", "sc.instance", "sr.series", "sr.instance")


def test_derived_uids_depend_on_source_key_model_and_kind() -> None:
    source = synthetic_mammogram(rows=64, columns=48, seed=1)
    other = synthetic_mammogram(rows=64, columns=48, seed=2)
    provenance = example_provenance().for_result("hash/0")
    uids = {kind: provenance.derived_uid(source, kind) for kind in KINDS}
    assert len(set(uids.values())) == len(KINDS)
    assert all(u.startswith(EXAMPLE_UID_ROOT) and is_valid_uid(u) for u in uids.values())
    assert uids == {kind: provenance.derived_uid(source, kind) for kind in KINDS}  # again
    changed = {
        "another source": provenance.derived_uid(other, "seg.instance"),
        "new content": provenance.for_result("other/0").derived_uid(source, "seg.instance"),
        "reprocessed": provenance.for_result("hash/1").derived_uid(source, "seg.instance"),
        "new model": replace(provenance, model_version="9.9").derived_uid(source, "seg.instance"),
    }
    print(f"\nseg.instance {uids['seg.instance']}; changed by: {changed}")
    assert uids["seg.instance"] not in changed.values() and len(set(changed.values())) == 4


def test_the_same_source_built_twice_gives_the_same_seg_uids() -> None:
    mass = Mass(row=40, col=40, radius=10)
    source = synthetic_mammogram(rows=128, columns=104, masses=[mass], seed=3)
    mask = mass_mask(128, 104, [mass])
    provenance = example_provenance().for_result("abc/0")
    first, second = (
        build_segmentation(source=source, mask=mask, provenance=provenance, series_number=901)
        for _ in range(2)
    )
    assert first is not None and second is not None
    for keyword in ("SOPInstanceUID", "SeriesInstanceUID"):
        assert first[keyword].value == second[keyword].value
    dim = [i.DimensionOrganizationUID for i in first.DimensionOrganizationSequence]
    assert dim == [i.DimensionOrganizationUID for i in second.DimensionOrganizationSequence]
    assert np.array_equal(first.pixel_array, second.pixel_array)


def test_the_digest_ignores_the_file_meta(tmp_path: Path) -> None:
    ds = synthetic_mammogram(rows=64, columns=48, seed=4, transfer_syntax=ExplicitVRLittleEndian)
    a, b = tmp_path / "a.dcm", tmp_path / "b.dcm"
    ds.save_as(a, enforce_file_format=True)
    ds.file_meta.SourceApplicationEntityTitle = "ANOTHERPACS"  # what another sender changes
    ds.save_as(b, enforce_file_format=True)
    assert a.read_bytes() != b.read_bytes()
    assert dataset_digest(a) == dataset_digest(b)
    ds.PatientAge = "051Y"
    ds.save_as(b, enforce_file_format=True)
    assert dataset_digest(a) != dataset_digest(b)
