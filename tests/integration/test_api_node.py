"""The API against a running node: audit from the SCP, retry and reprocess with workers on."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation

from service.app import create_app
from service.store import JobState
from tests.http_node import ADMIN, VIEWER, Peer, mammogram, node_state, running_node, send, wait_for

AS_VIEWER = {"Authorization": f"Bearer {VIEWER}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}


def test_associations_are_audited(tmp_path: Path) -> None:
    peer = Peer()
    try:
        with running_node(tmp_path, peer, allowed_callers=["PACS"]) as node:
            client = TestClient(create_app(node_state(node)))
            assert send(node, mammogram(seed=1), mammogram(seed=2)) == [0, 0]
            refused = AE(ae_title="STRANGER")
            refused.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
            assoc = refused.associate("127.0.0.1", node.settings.dicom_port, ae_title="MAMMOSEG")
            assert not assoc.is_established
            body = wait_for(
                lambda: (
                    b
                    if (b := client.get("/api/v1/associations", headers=AS_VIEWER).json())[
                        "counts"
                    ]["released"]
                    == 1
                    and b["counts"]["rejected"] == 1
                    else None
                )
            )
    finally:
        peer.close()
    rows = {a["outcome"]: a for a in body["items"]}
    assert rows["released"]["calling_ae_title"] == "PACS"
    assert rows["released"]["instances"] == 2
    assert rows["released"]["address"] == "127.0.0.1"
    released = rows["released"]
    assert datetime.fromisoformat(released["ended_at"]) >= datetime.fromisoformat(
        released["started_at"]
    )
    assert rows["rejected"]["calling_ae_title"] == "STRANGER"


def test_retry_a_failed_send_then_reprocess_with_workers_running(tmp_path: Path) -> None:
    peer = Peer(refuse=True)
    try:
        with running_node(tmp_path, peer, retry_give_up_s=0.3) as node:
            client = TestClient(create_app(node_state(node)))
            send(node, mammogram(seed=4))
            failed = wait_for(
                lambda: next(iter(node.store.reads.list(state=JobState.FAILED)), None), timeout_s=60
            )
            assert "gave up sending" in failed.reason
            peer.refuse = False
            answer = client.post(f"/api/v1/jobs/{failed.id}/retry", headers=AS_ADMIN)
            assert answer.status_code == 200, answer.text
            done = wait_for(
                lambda: (
                    j
                    if (j := node.store.reads.get(failed.id)) and j.state is JobState.DONE
                    else None
                )
            )
            first_uids = set(done.results["uids"].values())
            assert {ds.SOPInstanceUID for ds in peer.received} == first_uids
            detail = client.get(f"/api/v1/jobs/{failed.id}", headers=AS_VIEWER).json()
            assert detail["retries"] >= 2  # automatic ones, then the admin's
            assert any(e["detail"] == "retry requested by an admin" for e in detail["events"])
            metrics = client.get("/metrics", headers=AS_VIEWER).text
            assert 'mammoseg_stage_seconds_count{stage="sent"} 1.0' in metrics

            again = client.post(f"/api/v1/jobs/{failed.id}/reprocess", headers=AS_ADMIN)
            assert again.status_code == 200, again.text
            redone = wait_for(
                lambda: (
                    j
                    if (j := node.store.reads.get(failed.id))
                    and j.state is JobState.DONE
                    and j.results.get("uids")
                    else None
                )
            )
            assert not first_uids & set(redone.results["uids"].values())
            wait_for(lambda: len(peer.received) == 2 * len(first_uids))
    finally:
        peer.close()
