"""Reading the node's SRs back in tests: the exam SR's groups per breast, an SR's measurements.

Shared by tests/integration/test_exams.py and tests/e2e/test_exam_flow.py. Not a
test module: import it as ``from tests.exam_reports import ...``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.dataset import Dataset

#: The four standard views of a screening exam (breast, view).
VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))


def groups_by_breast(sr: Dataset) -> dict[str, Dataset]:
    """The TID 1501 groups of the exam SR, by tracking identifier."""
    found = {}
    for container in sr.ContentSequence:
        for group in container.get("ContentSequence", []):
            for item in group.get("ContentSequence", []):
                if item.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier":
                    found[item.TextValue] = group
    return found


def evaluations(group: Dataset) -> list[tuple[str, str]]:
    return [
        (item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue)
        for item in group.ContentSequence
        if item.ValueType == "CODE"
    ]


def numbers(group: Dataset) -> dict[str, float]:
    return {
        item.ConceptNameCodeSequence[0].CodeValue: float(item.MeasuredValueSequence[0].NumericValue)
        for item in group.ContentSequence
        if item.ValueType == "NUM"
    }


def measurements(sr: Dataset) -> list[tuple[str, str]]:
    """Every NUM and SCOORD of an SR's content tree, in document order, as text.

    (concept code, value): the numeric value, or the SCOORD's graphic data; two
    reports of the same lesions give the same list.
    """
    found: list[tuple[str, str]] = []

    def walk(items: Iterable[Dataset]) -> None:
        for item in items:
            code = str(item.ConceptNameCodeSequence[0].CodeValue)
            if item.ValueType == "NUM":
                found.append((code, str(item.MeasuredValueSequence[0].NumericValue)))
            elif item.ValueType == "SCOORD":
                found.append((code, repr([float(v) for v in item.GraphicData])))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found
