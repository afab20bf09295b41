"""deploy/ must list every setting, so the documentation cannot drift from the code."""

import tomllib
from pathlib import Path

from service.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


def test_every_setting_is_documented() -> None:
    readme = (DEPLOY / "README.md").read_text()
    example = (DEPLOY / "mammoseg.example.toml").read_text()
    for name in Settings.model_fields:
        assert f"`{name}`" in readme, name
        assert f"`MAMMOSEG_{name.upper()}`" in readme, name
        assert name in example, name


def test_example_config_is_valid(tmp_path: Path) -> None:
    values = tomllib.loads((DEPLOY / "mammoseg.example.toml").read_text())
    assert set(values) <= set(Settings.model_fields)
    settings = load_settings(DEPLOY / "mammoseg.example.toml")
    assert settings.destinations == ["ORTHANC@127.0.0.1:4242"]
