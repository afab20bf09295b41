"""Helpers for the HTTP tests: an app over a real store, a live node with uvicorn, a peer.

Used by tests/integration/test_api*.py (TestClient, no sockets unless needed)
and tests/browser/ (a real node, a real HTTP server, headless Chromium).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import uvicorn
from PIL import Image
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.status import Status
from service.app import NodeState, create_app
from service.inference import load_segmenter
from service.node import Node, start_node
from service.settings import Settings, load_settings
from service.testkit.synthetic import Mass, synthetic_mammogram
from tests.conftest import free_port
from tests.tiny_model import write_tiny_model

VIEWER = "viewer-token-0123456789"
ADMIN = "admin-token-0123456789abcdef"
T = TypeVar("T")


class Peer:
    """An in-process storage SCP (a PACS) that can be told to refuse stores."""

    def __init__(self, *, refuse: bool = False, ae_title: str = "DEST") -> None:
        self.port = free_port()
        self.ae_title = ae_title
        self.refuse = refuse
        self.received: list[Dataset] = []
        self.lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )

    @property
    def name(self) -> str:
        return f"{self.ae_title}@127.0.0.1:{self.port}"

    def on_store(self, event: evt.Event) -> int:
        with self.lock:
            if self.refuse:
                return int(Status.OUT_OF_RESOURCES)
            self.received.append(event.dataset)
        return int(Status.SUCCESS)

    def close(self) -> None:
        self.server.shutdown()


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "dicom_port": free_port(),
        "http_port": 0,
        "model_path": write_tiny_model(tmp_path / "tiny.onnx", level=0.6),
        "min_free_mb": 0,
        "poll_interval_s": 0.05,
        "retry_initial_s": 0.2,
        "retry_max_s": 0.5,
        "worker_processes": 0,  # the workers in this process (tests look at them)
        "viewer_token": VIEWER,
        "admin_token": ADMIN,
        "read_access": "token",
        # TestClient's requests say "Host: testserver".
        "allowed_hosts": ["localhost", "127.0.0.1", "::1", "testserver"],
    }
    values.update(overrides)
    return load_settings(**values)


class FakeScp:
    listening = True


def app_state(settings: Settings) -> NodeState:
    """NodeState over a real store and the tiny model, without SCP or workers."""
    from service.store import JobStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return NodeState(
        store=JobStore(settings.database_path),
        segmenter=load_segmenter(settings.model_path),
        scp=FakeScp(),
        data_dir=settings.data_dir,
        min_free_mb=settings.min_free_mb,
        version="test",
        settings=settings,
    )


def node_state(node: Node) -> NodeState:
    return NodeState(
        store=node.store,
        segmenter=node.segmenter,
        scp=node.scp,
        data_dir=node.settings.data_dir,
        min_free_mb=node.settings.min_free_mb,
        version="test",
        settings=node.settings,
        audit=node.audit,
    )


def send(node: Node, *datasets: Dataset, calling_ae: str = "PACS") -> list[int]:
    """C-STORE datasets to the node over one association; their statuses."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.settings.dicom_port, ae_title=node.settings.ae_title)
    if not assoc.is_established:
        raise AssertionError("association with the node not established")
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def wait_for(predicate: Callable[[], T | None], timeout_s: float = 30.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def mammogram(seed: int = 1, **kw: Any) -> Dataset:
    """A small synthetic MG with one bright mass that the tiny model finds."""
    kw.setdefault("masses", [Mass(row=256, col=170, radius=40)])
    return synthetic_mammogram(seed=seed, **kw)


def mammogram_png(seed: int = 1, *, mode: str = "L") -> bytes:
    """The synthetic mammogram as an 8-bit picture (what a phone would send)."""
    from dicom_node.pixels import display_image

    pixels = display_image(mammogram(seed)).pixels
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class LiveServer:
    url: str
    server: uvicorn.Server
    thread: threading.Thread


@contextmanager
def live_server(state: NodeState) -> Iterator[LiveServer]:
    """The app on a free loopback port, served by uvicorn in a thread."""
    port = free_port()
    config = uvicorn.Config(
        create_app(state), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout_s=20)
    try:
        yield LiveServer(url=f"http://127.0.0.1:{port}", server=server, thread=thread)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def running_node(tmp_path: Path, peer: Peer, **overrides: Any) -> Iterator[Node]:
    node = start_node(settings_for(tmp_path, destinations=[peer.name], **overrides))
    try:
        yield node
    finally:
        node.stop()
