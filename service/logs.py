"""Logging, configured in one place: one line per event, never patient data.

Messages name jobs by id, instances by UID and associations by their id;
``log_format = "json"`` writes each event as one JSON object per line for a
log collector, with those also as fields a log system can query: ``event``
(what happened, e.g. ``instance_stored``, ``job_done``), ``job_id``,
``sop_instance_uid`` and ``association_id``. Call sites pass them with
``extra={...}`` (plain ``logging``, so ``dicom_node`` needs nothing from here).
Only identifiers go there, never patient data.
"""

from __future__ import annotations

import json
import logging
import sys

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"
#: Fields a log call may carry in ``extra``; the JSON lines have them at the top level.
FIELDS = ("event", "job_id", "sop_instance_uid", "association_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                event[name] = value
        if record.exc_info:
            event["exception"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs PDUs and, at DEBUG, dataset contents: keep it at WARNING.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom and highdicom quote element values (names included) in their warnings:
    # route Python warnings into logging and drop them there, and mute both loggers.
    logging.captureWarnings(True)
    for name in ("py.warnings", "pydicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
