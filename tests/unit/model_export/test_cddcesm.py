"""The bundled real data and its split by patient, checked on the real files."""

import json
from pathlib import Path

import pytest

from model_export import cddcesm
from model_export.datasets import find_pairs, load_or_make_split


def test_the_bundled_data_is_complete() -> None:
    views = cddcesm.read_views()
    assert len(views) == 301
    assert len({v.patient for v in views}) == 164
    assert sum(v.has_mass_finding for v in views) == 171
    assert sum(v.mass_only_findings for v in views) == 58


def test_no_patient_is_in_two_splits_of_the_real_split_file(tmp_path: Path) -> None:
    out, split = cddcesm.write_cddcesm_dataset(tmp_path / "all")
    stored = json.loads((out / "split.json").read_text())
    patient = {v.key: v.patient for v in cddcesm.read_views()}
    patients = {name: {patient[k] for k in stored[name]} for name in ("train", "val", "test")}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(p) for p in patients.values()) == 164
    # 80/10/10 of the patients, every image in exactly one split.
    assert [len(patients[n]) for n in ("train", "val", "test")] == [131, 16, 17]
    assert sorted(k for n in ("train", "val", "test") for k in stored[n]) == sorted(patient)
    # Training reads the same split back, grouped by patient from dataset.json.
    pairs = find_pairs(out)
    assert {p.group for p in pairs} == set(patient.values())
    assert load_or_make_split(pairs, out / "split.json") == split


def test_the_split_file_the_model_was_trained_with_is_the_one_written() -> None:
    shipped = Path(__file__).resolve().parents[3] / "service" / "models" / "training"
    trained = shipped / "split.json"
    if not (shipped / "dataset.json").is_file():
        pytest.skip("the shipped model was not trained on cddcesm301")
    stored = json.loads(trained.read_text())
    split = cddcesm.patient_split(cddcesm.read_views())
    assert {n: sorted(stored[n]) for n in ("train", "val", "test")} == split


@pytest.mark.parametrize("subset", ["has_mass_finding", "mass_only_findings"])
def test_subsets_keep_each_patient_in_the_same_split(tmp_path: Path, subset: str) -> None:
    _, full = cddcesm.write_cddcesm_dataset(tmp_path / "all")
    out, narrowed = cddcesm.write_cddcesm_dataset(tmp_path / subset, subset=subset)
    views = {v.key: v for v in cddcesm.read_views()}
    for name in ("train", "val", "test"):
        assert set(narrowed[name]) <= set(full[name])
        assert all(getattr(views[k], subset) for k in narrowed[name])
    assert len(list((out / "images").iterdir())) == sum(len(v) for v in narrowed.values())
