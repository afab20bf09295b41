"""Shared fixtures: free ports, a tiny model, small synthetic settings."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.tiny_model import write_tiny_model


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "model" / "tiny.onnx")
