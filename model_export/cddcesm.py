"""Real training data: the bundled CDD-CESM low-energy views with radiologists' outlines.

``mammoseg make-dataset --cddcesm`` turns ``model_export/data/cddcesm301``
(301 views of 164 patients, all malignant; see its PROVENANCE.md) into a
folder of image/mask pairs with two files beside them:

- ``dataset.json``: one item per image (key, patient, view, BI-RADS, the
  findings flags) and the patient as the item's ``group``;
- ``split.json``: 80/10/10 **by patient** with a fixed seed. The split is
  drawn over all 164 patients and only then narrowed to the chosen subset, so
  a patient is in the same split whichever subset is written.

Subsets (the masks cover every finding, not only masses):
``all``; ``has_mass_finding`` (the findings text names a mass or nodule);
``mass_only_findings`` (masses are the only findings).
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from model_export.bundled import BUNDLED_CDDCESM
from model_export.datasets import DATASET_FILE, SPLIT_FILE, DatasetError, split_keys

SUBSETS = ("all", "has_mass_finding", "mass_only_findings")
SPLIT_SEED = 42
CITATION = (
    "CDD-CESM (Khaled R. et al., TCIA, DOI 10.7937/29kw-ae92; Scientific Data 9, 122 (2022), "
    "DOI 10.1038/s41597-022-01238-0), CC BY 4.0"
)


@dataclass(frozen=True)
class View:
    """One row of ``metadata.csv``."""

    key: str
    image: Path
    mask: Path
    patient: str
    side: str
    view: str
    birads: str
    has_mass_finding: bool
    mass_only_findings: bool
    mask_frac: float

    def in_subset(self, subset: str) -> bool:
        if subset == "all":
            return True
        if subset == "has_mass_finding":
            return self.has_mass_finding
        if subset == "mass_only_findings":
            return self.mass_only_findings
        raise DatasetError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")


def read_views(root: str | Path = BUNDLED_CDDCESM) -> list[View]:
    """Every view in ``metadata.csv``, checking that its image and mask exist."""
    root = Path(root)
    table = root / "metadata.csv"
    if not table.is_file():
        raise DatasetError(f"{root} has no metadata.csv: not a cddcesm301 folder")
    views = []
    with table.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stem = Path(row["filename"]).stem
            image = root / "images" / row["filename"]
            mask = root / "masks" / f"{stem}.png"
            if not image.is_file() or not mask.is_file():
                raise DatasetError(f"{stem}: image or mask missing under {root}")
            views.append(
                View(
                    key=stem,
                    image=image,
                    mask=mask,
                    patient=row["patient"],
                    side=row["side"],
                    view=row["view"],
                    birads=row["birads"],
                    has_mass_finding=row["has_mass_finding"] == "1",
                    mass_only_findings=row["mass_only_findings"] == "1",
                    mask_frac=float(row["mask_frac"]),
                )
            )
    if not views:
        raise DatasetError(f"{table} lists no images")
    return views


def patient_split(views: list[View], *, seed: int = SPLIT_SEED) -> dict[str, list[str]]:
    """80/10/10 over patients (every view of a patient in one split)."""
    return split_keys(
        [v.key for v in views],
        groups=[v.patient for v in views],
        seed=seed,
        fractions=(0.8, 0.1, 0.1),
    )


def write_cddcesm_dataset(
    out_dir: str | Path,
    *,
    root: str | Path = BUNDLED_CDDCESM,
    subset: str = "all",
    seed: int = SPLIT_SEED,
) -> tuple[Path, dict[str, list[str]]]:
    """Copy one subset's pairs to ``out_dir`` with ``dataset.json`` and the patient split."""
    if subset not in SUBSETS:
        raise DatasetError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    views = read_views(root)
    split = patient_split(views, seed=seed)
    chosen = [v for v in views if v.in_subset(subset)]
    wanted = {v.key for v in chosen}
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for view in chosen:
        shutil.copyfile(view.image, out_dir / "images" / view.image.name)
        shutil.copyfile(view.mask, out_dir / "masks" / view.mask.name)
    narrowed = {name: [k for k in keys if k in wanted] for name, keys in split.items()}
    (out_dir / SPLIT_FILE).write_text(
        json.dumps(
            {"seed": seed, "fractions": [0.8, 0.1, 0.1], "by": "patient", **narrowed}, indent=1
        )
    )
    manifest = {
        "source": "cddcesm301",
        "citation": CITATION,
        "subset": subset,
        "note": "masks outline every finding (not only masses); every case is malignant",
        "items": [
            {
                "key": v.key,
                "group": v.patient,
                "side": v.side,
                "view": v.view,
                "birads": v.birads,
                "has_mass_finding": v.has_mass_finding,
                "mass_only_findings": v.mass_only_findings,
                "mask_frac": v.mask_frac,
            }
            for v in chosen
        ],
    }
    (out_dir / DATASET_FILE).write_text(json.dumps(manifest, indent=1))
    return out_dir, narrowed
