"""pyproject.toml: one version, an SPDX licence with its file, psycopg only as an extra."""

from __future__ import annotations

import tomllib
from pathlib import Path

import service

ROOT = Path(__file__).resolve().parents[3]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_version_is_written_once() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["dynamic"]["version"] == {"attr": "service.__version__"}
    assert service.__version__.count(".") == 2


def test_license_is_an_spdx_string_with_its_file() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


def test_psycopg_is_an_extra_that_the_tests_pull_in() -> None:
    assert not any(dep.startswith("psycopg") for dep in PROJECT["dependencies"])
    extras = PROJECT["optional-dependencies"]
    assert any(dep.startswith("psycopg[binary]") for dep in extras["postgres"])
    assert "mammoseg[postgres]" in extras["test"]


def test_constraints_pin_every_dependency_within_pyproject() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version.strip()
    requirements = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra if not r.startswith("mammoseg")]
    for req in requirements:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    # Every install path uses the file.
    assert '-c "$ROOT/constraints.txt"' in (ROOT / "scripts" / "_venv.sh").read_text()
    assert "-c constraints.txt" in (ROOT / "deploy" / "Containerfile").read_text()
