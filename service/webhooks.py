"""Tell someone: webhook notices of job.done, job.failed and exam.complete, signed and retried.

A notice is a row of the store before anything is sent (``store.notices``; a job's
DONE or FAILED writes its notices in the same transaction). :class:`WebhookSender`,
one thread of ``serve`` (started by ``service.node.start_node`` beside the
retention sweep, never in a worker process or ``mammoseg worker``, so it runs once
however many worker processes there are), takes the due notices and POSTs each to
its URL, one at a time: a slow receiver delays other notices, never a job.

Each request (README "Webhooks"):

- body: the notice's JSON as stored (identifiers only, no patient data);
- ``X-Mammoseg-Event``: ``job.done``, ``job.failed`` or ``exam.complete``;
- ``X-Mammoseg-Delivery``: the notice's UUID, the same on every attempt;
- ``X-Mammoseg-Timestamp``: Unix seconds when this attempt was signed;
- ``X-Mammoseg-Signature``: ``sha256=`` + hex HMAC-SHA256 with the shared secret of
  ``TIMESTAMP + "." + body``, so a receiver that checks the signature and refuses an
  old timestamp (say older than 5 minutes) refuses a replayed request.

Any 2xx answer delivers it. Anything else (another status, a timeout, a refused
connection) is retried with exponential backoff (``webhook_retry_initial_s``
doubling to ``webhook_retry_max_s``) until ``webhook_give_up_attempts`` attempts or
``webhook_give_up_s`` since the event, then it is a dead letter (state DEAD): listed
by ``GET /api/v1/webhooks/dead-letters`` and on the dashboard, and retried by an admin.
Redirects are never followed (a 3xx is a failure) and at most
:data:`MAX_RESPONSE_BYTES` of an answer are read; its body is never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.settings import Settings
from service.store import JobStore, Notice
from service.worker import RetryPolicy

log = logging.getLogger(__name__)

#: What is read of a receiver's answer, at most (then the connection is closed).
MAX_RESPONSE_BYTES = 64 * 1024
SIGNATURE_HEADER = "X-Mammoseg-Signature"
EVENT_HEADER = "X-Mammoseg-Event"
DELIVERY_HEADER = "X-Mammoseg-Delivery"
TIMESTAMP_HEADER = "X-Mammoseg-Timestamp"


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp.body`` under the shared secret."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def signed_headers(notice: Notice, secret: bytes, *, now: float) -> dict[str, str]:
    """The headers of one attempt to deliver ``notice``, signed at ``now``."""
    timestamp = str(int(now))
    return {
        "Content-Type": "application/json",
        "User-Agent": "mammoseg-webhooks",
        EVENT_HEADER: notice.event,
        DELIVERY_HEADER: notice.delivery_id,
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, notice.body.encode("utf-8")),
    }


class DeliveryFailed(Exception):
    """One attempt did not get a 2xx answer (the message says what it got)."""


def post(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float) -> int:
    """POST once; the status of a 2xx answer, else :class:`DeliveryFailed`.

    http.client follows no redirect; ``timeout_s`` bounds the connect, and then
    the whole exchange (request, answer, body), after which the socket is shut.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        connection = http.client.HTTPSConnection(host, port, timeout=timeout_s, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # A receiver that answers byte by byte: the socket is shut after timeout_s in all.
    deadline = threading.Timer(timeout_s, _shut, args=(connection,))
    deadline.daemon = True
    try:
        connection.connect()
        deadline.start()
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        response.read(MAX_RESPONSE_BYTES)  # drained up to the cap, never logged
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        deadline.cancel()
        connection.close()
    if not 200 <= status < 300:
        raise DeliveryFailed(f"HTTP {status}")
    return status


def _shut(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            log.debug("webhook socket already closed")


@dataclass(frozen=True, kw_only=True)
class WebhookPolicy:
    """How the sender sends and retries (the webhook_* settings)."""

    secret: bytes
    timeout_s: float
    retry: RetryPolicy  # give_up_s: seconds since the event
    give_up_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(
            secret=settings.webhook_key(),
            timeout_s=settings.webhook_timeout_s,
            retry=RetryPolicy(
                initial_s=settings.webhook_retry_initial_s,
                max_s=settings.webhook_retry_max_s,
                give_up_s=settings.webhook_give_up_s,
            ),
            give_up_attempts=settings.webhook_give_up_attempts,
        )

    def retry_at(self, notice: Notice, now: float) -> float | None:
        """When to try again after ``notice``'s failed attempt; None: give up."""
        if notice.attempts >= self.give_up_attempts:
            return None
        due = now + self.retry.delay(notice.attempts)
        if due - notice.created_at > self.retry.give_up_s:
            return None
        return due


class WebhookSender(threading.Thread):
    """serve's one webhook thread: due notices out, outcomes back into the store."""

    def __init__(self, store: JobStore, policy: WebhookPolicy, stop: threading.Event) -> None:
        super().__init__(name="webhooks", daemon=True)
        self.store = store
        self.policy = policy
        self.stop_event = stop
        # Wakes often enough for the shortest backoff; the store is the queue.
        self.poll_s = max(0.05, min(1.0, policy.retry.initial_s / 2))
        self.sent = 0
        self.failures = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                busy = self.send_due()
            except Exception:  # boundary: a store hiccup must not stop the sender
                log.exception("webhooks: cannot read the due notices; continuing")
                busy = False
            if not busy:
                self.stop_event.wait(self.poll_s)

    def send_due(self, *, now: float | None = None) -> bool:
        """One round: every notice due now; True when there were any."""
        lease = 2 * self.policy.timeout_s + 5.0
        notices = self.store.notices.claim_due(lease_s=lease, now=now)
        for notice in notices:
            if self.stop_event.is_set():
                break  # the rest stay leased, and are due again when the lease runs out
            self.send(notice)
        return bool(notices)

    def send(self, notice: Notice) -> None:
        body = notice.body.encode("utf-8")
        fields = {"event": "webhook", "delivery_id": notice.delivery_id, "job_id": notice.job_id}
        try:
            headers = signed_headers(notice, self.policy.secret, now=time.time())
            post(notice.url, body, headers, timeout_s=self.policy.timeout_s)
        except DeliveryFailed as exc:
            self.failures += 1
            now = time.time()
            retry_at = self.policy.retry_at(notice, now)
            self.store.notices.failed(notice.id, str(exc), retry_at=retry_at, now=now)
            if retry_at is None:
                log.error(
                    "webhook %s %s to %s given up after %d attempts (%s): a dead letter",
                    notice.event,
                    notice.delivery_id,
                    _origin(notice.url),
                    notice.attempts,
                    exc,
                    extra={**fields, "event": "webhook_dead_letter"},
                )
            else:
                log.warning(
                    "webhook %s %s to %s failed (attempt %d: %s); again in %.1f s",
                    notice.event,
                    notice.delivery_id,
                    _origin(notice.url),
                    notice.attempts,
                    exc,
                    retry_at - now,
                    extra={**fields, "event": "webhook_failed"},
                )
            return
        self.sent += 1
        self.store.notices.delivered(notice.id)
        log.info(
            "webhook %s %s delivered to %s",
            notice.event,
            notice.delivery_id,
            _origin(notice.url),
            extra={**fields, "event": "webhook_delivered"},
        )


def _origin(url: str) -> str:
    """Scheme, host and port only: a URL's path may hold a receiver's token."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def start_webhooks(
    settings: Settings, store: JobStore, stop: threading.Event
) -> WebhookSender | None:
    """serve's sender, when ``webhook_urls`` names a receiver (None otherwise)."""
    if not settings.webhook_urls:
        return None
    sender = WebhookSender(store, WebhookPolicy.from_settings(settings), stop)
    sender.start()
    log.info("webhooks: %d receivers", len(settings.webhook_urls))
    return sender
