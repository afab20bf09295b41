"""JSON log lines: the identifiers as fields a log system can query, nothing else added."""

from __future__ import annotations

import json
import logging

from service.logs import FIELDS, JsonFormatter


def record(**extra: object) -> logging.LogRecord:
    logger = logging.getLogger("service.test")
    return logger.makeRecord(
        "service.test", logging.INFO, __file__, 1, "job %d DONE", (7,), None, extra=extra
    )


def test_fields_from_extra_are_top_level() -> None:
    line = JsonFormatter().format(
        record(event="job_done", job_id=7, sop_instance_uid="1.2.3", association_id="assoc-1")
    )
    event = json.loads(line)
    assert event["message"] == "job 7 DONE"
    assert {name: event[name] for name in FIELDS} == {
        "event": "job_done",
        "job_id": 7,
        "sop_instance_uid": "1.2.3",
        "association_id": "assoc-1",
    }


def test_only_the_named_fields_are_copied() -> None:
    event = json.loads(JsonFormatter().format(record(event="x", PatientName="Doe^Jane")))
    assert event["event"] == "x"
    assert "PatientName" not in event and "Doe" not in json.dumps(event)
    assert "job_id" not in event
