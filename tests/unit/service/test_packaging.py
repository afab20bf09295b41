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
