from pathlib import Path

import pytest

from service.settings import SettingsError, load_settings


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("MAMMOSEG_AE_TITLE", "MAMMOSEG_DICOM_PORT", "MAMMOSEG_DESTINATIONS"):
        monkeypatch.delenv(key, raising=False)
    s = load_settings()
    assert (s.ae_title, s.dicom_host, s.dicom_port) == ("MAMMOSEG", "127.0.0.1", 11112)
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.destinations == [] and s.allowed_callers == []
    assert s.database_path == Path("mammoseg-data") / "jobs.sqlite3"


def test_precedence_cli_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'ae_title = "FROMFILE"\ndicom-port = 2000\nhttp_port = 3000\n'
        'destinations = ["PACS@127.0.0.1:4242"]\n'
    )
    monkeypatch.setenv("MAMMOSEG_DICOM_PORT", "2001")
    monkeypatch.setenv("MAMMOSEG_ALLOWED_CALLERS", "ORTHANC, STORESCU")
    s = load_settings(config, http_port=3001)
    assert s.ae_title == "FROMFILE"
    assert s.dicom_port == 2001
    assert s.http_port == 3001
    assert s.destinations == ["PACS@127.0.0.1:4242"]
    assert s.allowed_callers == ["ORTHANC", "STORESCU"]
    assert s.destination_list[0].port == 4242


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"dicom_port": 70000}, "dicom_port"),
        ({"destinations": ["nohost"]}, "nohost"),
        ({"uid_root": "1.2.3"}, "uid_root"),
        ({"ae_title": "A" * 17}, "ae_title"),
        ({"ae_title": "BAD\\AE"}, "ae_title"),
    ],
)
def test_bad_values_stop_with_their_name(override: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**override)


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text("ae_tilte = 'TYPO'\n")
    with pytest.raises(SettingsError, match="ae_tilte"):
        load_settings(config)
