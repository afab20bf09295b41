"""Where the data bundled in ``model_export`` lies; light, the CLI reads it to build help."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: Mammogram backgrounds for lesion insertion (``data/ddsm66/PROVENANCE.md``).
BUNDLED_DDSM66 = PACKAGE_DIR / "data" / "ddsm66"
#: Real low-energy CDD-CESM views with radiologists' outlines (``data/cddcesm301/PROVENANCE.md``).
BUNDLED_CDDCESM = PACKAGE_DIR / "data" / "cddcesm301"
