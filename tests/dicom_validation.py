"""Validate DICOM files with dicom3tools' ``dciodvfy`` (Debian package dicom3tools).

``dciodvfy`` checks a file against its IOD (PS3.3) and the data dictionary
(PS3.6).  It prints to stderr (and exits 1 on errors); lines start with
"Error" or "Warning".  The "needed to build DICOMDIR" warnings (PS3.11 media
profiles) concern media, not the object, and are dropped.

Not a test module: import it as ``from tests.dicom_validation import ...``.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "dciodvfy"
DCIODVFY_TIMEOUT_S = 120
_IGNORED_WARNINGS = ("needed to build DICOMDIR",)


def dciodvfy_available() -> bool:
    """Whether dciodvfy is on PATH."""
    return shutil.which(DCIODVFY) is not None


def run_dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """Run dciodvfy on ``path``: (errors, warnings), one line each.

    Skips the calling test when dciodvfy is not installed.  dciodvfy cannot
    read Deflated Explicit VR Little Endian: inflate such a file first.
    """
    if not dciodvfy_available():
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    result = subprocess.run(
        [DCIODVFY, str(path)],
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
