"""``mammoseg check-config``: the settings serve would use, their sources, and what can fail."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import pytest

from service.cli import main
from service.config_check import check
from service.settings import SettingsError, load_settings
from tests.conftest import free_port

ADMIN_SECRET = "admin-secret-0123456789"
DB_PASSWORD = "pg-password-xyz"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("MAMMOSEG_"):
            monkeypatch.delenv(name)


def ok_args(tmp_path: Path, model: Path) -> list[str]:
    return [
        "--data-dir",
        str(tmp_path / "data"),
        "--model-path",
        str(model),
        "--dicom-port",
        str(free_port()),
        "--http-port",
        str(free_port()),
    ]


def test_sources_and_masked_secrets(
    tmp_path: Path,
    tiny_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "FROMFILE"\nworkers = 2\nsc_max_size = 1024\n')
    monkeypatch.setenv("MAMMOSEG_CONFIG", str(config))
    monkeypatch.setenv("MAMMOSEG_WORKERS", "3")
    monkeypatch.setenv("MAMMOSEG_ADMIN_TOKEN", ADMIN_SECRET)

    code = main(["check-config", *ok_args(tmp_path, tiny_model), "--ae-title", "FROMFLAG"])

    out, err = capsys.readouterr()
    assert code == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["ae_title"] == ["flag", "FROMFLAG"]
    assert rows["workers"] == ["env", "3"]
    assert rows["sc_max_size"] == ["file", "1024"]
    assert rows["log_level"] == ["default", "INFO"]
    assert rows["admin_token"] == ["env", "********"]
    assert f"config file: {config} (from env)" in out
    assert "configuration OK" in out
    assert ADMIN_SECRET not in out + err


def test_sources_agree_with_what_serve_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.toml"
    config.write_text("dicom-port = 2000\nhttp_port = 3000\n")
    monkeypatch.setenv("mammoseg_dicom_port", "2001")  # read case-insensitively
    report = check(config, {"http_port": 3001, "workers": None}, {"mammoseg_dicom_port": "2001"})
    assert report.settings is not None
    assert (report.settings.dicom_port, report.sources["dicom_port"]) == (2001, "env")
    assert (report.settings.http_port, report.sources["http_port"]) == (3001, "flag")
    assert report.sources["workers"] == "default"
    served = load_settings(config, http_port=3001)
    assert served.dicom_port == report.settings.dicom_port


def test_every_bad_value_is_listed_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAMMOSEG_DICOM_PORT", "70000")
    monkeypatch.setenv("MAMMOSEG_SC_COMPRESSION", "gif")

    code = main(["check-config", "--data-dir", str(tmp_path)])

    _, err = capsys.readouterr()
    assert code == 2
    assert "2 problem(s)" in err
    assert "dicom_port" in err and "sc_compression" in err


def test_serve_refuses_what_check_config_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAMMOSEG_UID_ROOT", "1.2.3")
    assert main(["check-config", "--data-dir", str(tmp_path)]) == 2
    assert main(["serve", "--data-dir", str(tmp_path)]) == 2
    assert "check-config" in capsys.readouterr().err


def test_database_password_is_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1 on loopback refuses at once: the store check fails, naming the URL without password.
    url = f"postgresql://mammoseg:{DB_PASSWORD}@127.0.0.1:1/mammoseg"
    monkeypatch.setenv("MAMMOSEG_DATABASE_URL", url)

    code = main(["check-config", "--worker", "--data-dir", str(tmp_path)])

    out, err = capsys.readouterr()
    assert code == 2
    assert "store: cannot connect to postgresql://mammoseg:***@127.0.0.1:1/mammoseg" in err
    assert "postgresql://mammoseg:***@127.0.0.1:1/mammoseg" in out
    assert DB_PASSWORD not in out + err


def test_a_wrong_database_url_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(database_url=f"mysql://user:{DB_PASSWORD}@host/db")
    assert "database_url" in str(caught.value)
    assert DB_PASSWORD not in str(caught.value)


def test_postgres_without_psycopg_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "psycopg" else real(name, *a)
    )
    with pytest.raises(SettingsError, match=r"mammoseg\[postgres\]"):
        load_settings(database_url="postgresql://u:p@127.0.0.1:5432/db")


def test_missing_model_busy_port_and_bad_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "jobs.sqlite3").write_bytes(b"this is not a database file at all" * 100)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(
            [
                "check-config",
                "--data-dir",
                str(data),
                "--model-path",
                str(tmp_path / "missing.onnx"),
                "--dicom-port",
                str(port),
                "--http-port",
                "0",
            ]
        )
    _, err = capsys.readouterr()
    assert code == 2
    assert "3 problem(s)" in err
    assert "model: model file" in err and "does not exist" in err
    assert f"dicom_port: cannot bind 127.0.0.1:{port}" in err and "already running" in err
    assert "store: SQLite" in err and "cannot be read" in err


def test_data_dir_that_is_a_file(tmp_path: Path, tiny_model: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    report = check(None, {"data_dir": not_a_dir, "model_path": tiny_model}, {}, worker=True)
    assert [p for p in report.problems if p.startswith("data_dir")] == [
        f"data_dir: {not_a_dir} exists and is not a directory"
    ]


def test_existing_store_and_data_dir_are_left_as_they_were(
    tmp_path: Path, tiny_model: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "jobs.sqlite3").execute("CREATE TABLE t (x)").connection.close()
    before = sorted(p.name for p in data.iterdir())
    report = check(None, {"data_dir": data, "model_path": tiny_model}, {}, worker=True)
    assert report.exit_code == 0, report.problems
    assert sorted(p.name for p in data.iterdir()) == before


def test_unknown_environment_variable_is_a_warning(tmp_path: Path, tiny_model: Path) -> None:
    environ = {"MAMMOSEG_DICOM_HOTS": "0.0.0.0"}
    report = check(None, {"data_dir": tmp_path, "model_path": tiny_model}, environ, worker=True)
    assert report.exit_code == 0, report.problems
    assert "MAMMOSEG_DICOM_HOTS is not a setting; serve ignores it" in report.warnings


def test_a_committing_destination_not_let_back_in_is_a_warning(
    tmp_path: Path, tiny_model: Path
) -> None:
    flags = {
        "data_dir": tmp_path,
        "model_path": tiny_model,
        "destinations": ["PACS@127.0.0.1:104?commit=1", "OTHER@127.0.0.1:105"],
        "allowed_callers": ["MODALITY"],
    }
    report = check(None, flags, {}, worker=True)
    assert report.exit_code == 0, report.problems
    (warning,) = [w for w in report.warnings if "storage commitment" in w]
    assert warning.startswith("storage commitment from PACS: not in allowed_callers")
    flags["allowed_callers"] = ["MODALITY", "PACS"]
    report = check(None, flags, {}, worker=True)
    assert not [w for w in report.warnings if "storage commitment" in w]


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_help_points_to_check_config_and_the_variables(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "mammoseg check-config" in out
    assert "MAMMOSEG_<KEY>" in out
    assert "deploy/README.md" in out
    assert "Exit status: 0" in out
