"""Webhooks: the dead letters (notices given up) and an admin's retry of one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from service.api.deps import AdminDep, NodeDep
from service.api.problems import problem_responses
from service.api.schemas import DeadLettersOut, WebhookNoticeOut
from service.store import JobConflict, NoticeNotFound

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

_ERRORS = problem_responses({401: "Missing or wrong token, or not the admin token"})
_RETRY_ERRORS = problem_responses(
    {
        401: "Missing or wrong token, or not the admin token",
        403: "A browser session without the action header",
        404: "No such notice",
        409: "The notice is not a dead letter",
    }
)


@router.get("/dead-letters", response_model=DeadLettersOut, responses=_ERRORS)
def dead_letters(
    node: NodeDep,
    caller: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeadLettersOut:
    """Webhook notices given up after their retries, newest first, and the counts by state."""
    notices = node.store.notices
    return DeadLettersOut(
        counts=notices.counts(),
        items=[WebhookNoticeOut.of(n) for n in notices.dead_letters(limit=limit)],
    )


@router.post(
    "/dead-letters/{notice_id}/retry", response_model=WebhookNoticeOut, responses=_RETRY_ERRORS
)
def retry_dead_letter(notice_id: int, node: NodeDep, caller: AdminDep) -> WebhookNoticeOut:
    """Send a dead letter again: PENDING, due now, its attempts counted afresh."""
    try:
        notice = node.store.notices.retry(notice_id)
    except NoticeNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except JobConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    return WebhookNoticeOut.of(notice)
