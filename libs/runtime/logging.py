"""Structured JSON logs with structlog: every line names the service, the instance and, while a
request or message is handled, its correlation id. No line holds a credential (`redact.py`)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid

import structlog

from libs.runtime.redact import RedactingJSONRenderer


def instance_id(service: str) -> str:
    """A name unique to this process: service, host, pid and a short random suffix."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def configure_logging(service: str, instance: str, level: str = "INFO") -> None:
    """Send structlog and standard-library logs to stdout as one JSON object per line."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            _static(service, instance),
            structlog.processors.format_exc_info,
            RedactingJSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                _static(service, instance),
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                RedactingJSONRenderer(),
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def _static(service: str, instance: str) -> structlog.types.Processor:
    def add(
        _logger: object, _name: str, event: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        event.setdefault("service", service)
        event.setdefault("instance", instance)
        return event

    return add
