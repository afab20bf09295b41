"""Test-only fault injection: the decode step aborts its process on one SOP Instance UID.

The poison-pill test (tests/e2e/test_worker_processes.py) needs an instance
whose decoding kills the process the way a decoder's segfault would. Two keys
arm it, and a production node has neither: the setting ``test_fault_injection``
must be on, and the environment variable ``MAMMOSEG_TEST_ABORT_ON_UID`` names
the UID. The wiring arms it once in the process that runs the workers
(``service.node.start_workers``) and logs a warning when it does;
``mammoseg check-config`` warns too. Unarmed, :func:`before_decode` is one
comparison with None.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from collections.abc import Mapping

ABORT_ON_UID_ENV = "MAMMOSEG_TEST_ABORT_ON_UID"

log = logging.getLogger(__name__)
_abort_on: str | None = None


def arm(enabled: bool, environ: Mapping[str, str] = os.environ) -> str | None:
    """Arm (or, when not ``enabled``, disarm) the fault; returns the UID it aborts on."""
    global _abort_on
    _abort_on = (environ.get(ABORT_ON_UID_ENV) or None) if enabled else None
    if _abort_on is not None:
        log.warning(
            "test fault injection armed: decoding %s aborts this process (tests only)",
            _abort_on,
            extra={"event": "test_fault_armed", "sop_instance_uid": _abort_on},
        )
    return _abort_on


def before_decode(sop_instance_uid: object) -> None:
    """Called by the decode step: abort the process if the fault is armed for this UID."""
    if _abort_on is not None and str(sop_instance_uid) == _abort_on:
        with contextlib.suppress(ValueError, OSError):  # no core file left behind
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.abort()
