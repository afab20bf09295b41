"""Validate DICOM files with dicom3tools' ``dciodvfy`` and ``dcentvfy`` (Debian dicom3tools).

``dciodvfy`` checks a file against its IOD (PS3.3) and the data dictionary
(PS3.6).  It prints to stderr (and exits 1 on errors); lines start with
"Error" or "Warning".  The "needed to build DICOMDIR" warnings (PS3.11 media
profiles) concern media, not the object, and are dropped.

``dcentvfy`` checks that several files agree on the attributes of the
entities they share (patient, study, series, frame of reference, equipment;
PS3.3 C.7).  Its exit status is not reliable: the result is what it prints,
lines starting with "Error" or "Warning".

Not a test module: import it as ``from tests.dicom_validation import ...``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

DCIODVFY = "dciodvfy"
DCENTVFY = "dcentvfy"
DCIODVFY_TIMEOUT_S = 120
_IGNORED_WARNINGS = ("needed to build DICOMDIR",)


def readable_copy(path: Path | str) -> Path:
    """``path`` itself, or for a deflated file an Explicit VR Little Endian copy beside it.

    dicom3tools reads no Deflated Explicit VR Little Endian (PS3.5 A.5); the
    copy holds the same dataset, so the IOD checks are the same.
    """
    path = Path(path)
    meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["TransferSyntaxUID"])
    if meta.file_meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return path
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy = path.with_name(f"{path.stem}.inflated.dcm")
    ds.save_as(copy, enforce_file_format=True)
    return copy


def dciodvfy_available() -> bool:
    """Whether dciodvfy is on PATH."""
    return shutil.which(DCIODVFY) is not None


def run_dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """Run dciodvfy on ``path``: (errors, warnings), one line each.

    Skips the calling test when dciodvfy is not installed.  dciodvfy cannot
    read Deflated Explicit VR Little Endian: such a file is checked through
    its inflated copy (:func:`readable_copy`).
    """
    if not dciodvfy_available():
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    result = subprocess.run(
        [DCIODVFY, str(readable_copy(path))],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=DCIODVFY_TIMEOUT_S,
        check=False,
    )
    errors: list[str] = []
    warnings: list[str] = []
    for raw in (result.stderr + "\n" + result.stdout).splitlines():
        line = raw.strip()
        if line.startswith("Error"):
            errors.append(line)
        elif line.startswith("Warning") and not any(s in line for s in _IGNORED_WARNINGS):
            warnings.append(line)
    if result.returncode != 0 and not errors:
        errors.append(f"dciodvfy exited {result.returncode} without an Error line")
    return errors, warnings


def assert_valid_dicom(path: Path | str) -> list[str]:
    """Fail the test listing dciodvfy's errors; return the remaining warnings."""
    errors, warnings = run_dciodvfy(path)
    if errors:
        listing = "\n".join(errors)
        pytest.fail(f"dciodvfy found {len(errors)} error(s) in {Path(path).name}:\n{listing}")
    return warnings


def run_dcentvfy(paths: list[Path] | list[str]) -> tuple[list[str], list[str]]:
    """Run dcentvfy on ``paths`` together: (errors, warnings), one line each.

    Skips the calling test when dcentvfy is not installed; deflated files are
    checked through :func:`readable_copy`.
    """
    if shutil.which(DCENTVFY) is None:
        pytest.skip("dcentvfy is not installed (Debian package dicom3tools)")
    result = subprocess.run(
        [DCENTVFY, *(str(readable_copy(p)) for p in paths)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=DCIODVFY_TIMEOUT_S,
        check=False,
    )
    errors: list[str] = []
    warnings: list[str] = []
    for raw in (result.stderr + "\n" + result.stdout).splitlines():
        line = raw.strip()
        if line.startswith(("Error", "Abort")):
            errors.append(line)
        elif line.startswith("Warning"):
            warnings.append(line)
    return errors, warnings


def assert_consistent(paths: list[Path] | list[str]) -> list[str]:
    """Fail the test listing dcentvfy's errors; return its warnings."""
    errors, warnings = run_dcentvfy(paths)
    if errors:
        listing = "\n".join(errors)
        pytest.fail(f"dcentvfy found {len(errors)} inconsistencies:\n{listing}")
    return warnings
