"""Shared fixtures: free ports, a tiny model, small synthetic settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.testkit.processes import free_port
from tests.tiny_model import write_tiny_model

__all__ = ["free_port", "tiny_model"]  # free_port: service.testkit's, one implementation


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "model" / "tiny.onnx")
