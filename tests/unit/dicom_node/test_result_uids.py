"""Result UIDs are derived, not random: a source sent again gives the objects it gave."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.capture import build_overlay_capture
from dicom_node.digest import dataset_digest
from dicom_node.pixels import display_image
from dicom_node.provenance import (
    DerivedObjectError,
    derived_object_kwargs,
    highdicom_errors,
)
from dicom_node.seg import build_segmentation
from dicom_node.spacing import pixel_spacing
from dicom_node.sr import build_measurement_report
from dicom_node.uids import is_valid_uid
from service.imaging.lesions import measure_lesions
from service.testkit.synthetic import (
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


# --- Series and equipment: one definition for every derived object ------------------

#: General Equipment (PS3.3 C.7.5.1) as the Provenance states it.
EQUIPMENT = {
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "model_name",
    "SoftwareVersions": "software_version",
    "DeviceSerialNumber": "device_serial_number",
    "InstitutionName": "institution_name",
}


def all_three(provenance: object) -> dict[str, Dataset]:
    """The SEG, SC and SR of one synthetic mammogram with a mass."""
    mass = Mass(row=60, col=50, radius=14)
    source = synthetic_mammogram(rows=160, columns=128, masses=[mass], seed=5)
    mask = mass_mask(160, 128, [mass])
    kw = {"source": source, "provenance": provenance}
    seg = build_segmentation(mask=mask, series_number=901, **kw)  # type: ignore[arg-type]
    assert seg is not None
    sc = build_overlay_capture(
        image=display_image(source).pixels,
        mask=mask,
        series_number=902,
        **kw,  # type: ignore[arg-type]
    )
    spacing = pixel_spacing(source)
    assert spacing is not None
    lesions = measure_lesions(
        mask, mask.astype(np.float32), spacing_mm=(spacing.row_mm, spacing.column_mm)
    )
    sr = build_measurement_report(
        lesions=lesions,
        spacing=spacing,
        segmentation=seg,
        series_number=903,
        **kw,  # type: ignore[arg-type]
    )
    return {"seg": seg, "sc": sc, "sr": sr, "source": source}


def test_series_and_equipment_of_seg_sc_and_sr_come_from_the_one_helper() -> None:
    provenance = example_provenance(
        manufacturer="ACME Radiology AI",
        model_name="HybridNet",
        model_version="2.1",
        software_version="3.4.5",
        device_serial_number="SN-0042",
        institution_name="Example Hospital",
    ).for_result("hash/0")
    built = all_three(provenance)
    source = built.pop("source")
    numbers = {"seg": 901, "sc": 902, "sr": 903}
    for kind, ds in built.items():
        for keyword, field in EQUIPMENT.items():
            assert ds[keyword].value == getattr(provenance, field), (kind, keyword)
        # What derived_object_kwargs makes, as highdicom wrote it.
        expected = derived_object_kwargs(
            kind,  # type: ignore[arg-type]
            provenance,
            source,
            series_number=numbers[kind],
            series_description=str(ds.SeriesDescription),
        )
        assert ds.SeriesInstanceUID == expected["series_instance_uid"], kind
        assert ds.SOPInstanceUID == expected["sop_instance_uid"], kind
        assert ds.SeriesNumber == expected["series_number"], kind
        assert ds.InstanceNumber == expected["instance_number"] == 1, kind
        (model,) = [
            item
            for item in ds.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing
            and item.get("ManufacturerModelName") == provenance.model_name  # not highdicom
        ]
        assert model == expected["contributing_equipment"][0], kind
    # The same equipment in all three, attribute for attribute.
    for keyword in EQUIPMENT:
        assert len({str(ds[keyword].value) for ds in built.values()}) == 1, keyword
    assert built["seg"].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert built["sr"].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_derived_object_kwargs_refuses_an_unknown_kind() -> None:
    source = synthetic_mammogram(rows=64, columns=48, seed=6)
    with pytest.raises(ValueError, match="result kind"):
        derived_object_kwargs(
            "pr",  # type: ignore[arg-type]
            example_provenance(),
            source,
            series_number=1,
            series_description="x",
        )


class _BuildError(DerivedObjectError):
    pass


@pytest.mark.parametrize("raised", [ValueError, TypeError, AttributeError, KeyError, IndexError])
def test_highdicom_errors_become_the_builders_error_with_the_reason(
    raised: type[Exception],
) -> None:
    with pytest.raises(_BuildError, match="cannot build the thing: .*bad value") as caught:
        with highdicom_errors(_BuildError, "the thing"):
            raise raised("bad value")
    assert isinstance(caught.value.__cause__, raised)


def test_highdicom_errors_let_other_exceptions_through() -> None:
    with pytest.raises(RuntimeError, match="not highdicom's"):
        with highdicom_errors(_BuildError, "the thing"):
            raise RuntimeError("not highdicom's")
