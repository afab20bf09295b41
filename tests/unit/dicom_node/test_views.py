"""Breast and view from each of the three places a header may say it (dicom_node/views.py)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicom_node.views import BreastView, breast_view


def code(value: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = "view"
    return item


def test_image_laterality_and_view_code_sequence() -> None:
    ds = Dataset()
    ds.ImageLaterality = "R"
    ds.ViewCodeSequence = [code("399368009")]
    ds.ViewPosition = "CC"  # the code wins over the free text
    assert breast_view(ds) == BreastView("R", "MLO")
    assert breast_view(ds).slot == "R-MLO"


def test_series_laterality_and_view_position() -> None:
    ds = Dataset()
    ds.Laterality = "L"
    ds.ViewPosition = "cc "
    assert breast_view(ds).slot == "L-CC"


def test_old_srt_code_and_non_standard_views_are_other() -> None:
    ds = Dataset()
    ds.ImageLaterality = "L"
    ds.ViewCodeSequence = [code("R-10242", "SRT")]
    assert breast_view(ds).slot == "L-CC"
    ds.ViewCodeSequence = [code("399192008")]
    assert breast_view(ds) == BreastView("L", "XCCL") and breast_view(ds).slot is None
    bare = Dataset()
    bare.ViewPosition = "ML"
    assert breast_view(bare).slot is None and breast_view(bare).label == "?-ML"
    assert breast_view(Dataset()).label == ""
