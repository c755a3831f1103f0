"""Structured logs with structlog: every line names the service, the instance and, while a
request or message is handled, its correlation id. One JSON object per line when stdout is not a
terminal (a file, a pipe, a container's log driver: what machines read); human-readable, coloured
lines when it is (`weelo up` or `weelo run` in a terminal). No line holds a credential
(`redact.py`), in either form."""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid

import structlog

from libs.runtime.redact import RedactingJSONRenderer, redact


def instance_id(service: str) -> str:
    """A name unique to this process: service, host, pid and a short random suffix."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def configure_logging(
    service: str, instance: str, level: str = "INFO", console: bool | None = None
) -> None:
    """Send structlog and standard-library logs to stdout: JSON lines, or readable lines when
    `console` (by default: when stdout is a terminal)."""
    if console is None:
        console = sys.stdout.isatty()
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
            *_renderer(console),
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
                *_renderer(console),
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


def _renderer(console: bool) -> list[structlog.types.Processor]:
    """The last processors: redacted JSON, or redacted values rendered for a person."""
    if not console:
        return [RedactingJSONRenderer()]
    return [
        structlog.processors.format_exc_info,  # a traceback as text, scrubbed like the rest
        _redact_values,
        structlog.dev.ConsoleRenderer(colors=True, sort_keys=False),
    ]


def _redact_values(
    _logger: object, _name: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    """Every value scrubbed of credentials before the console renders it (a rendered, coloured
    line is not scrubbed afterwards: a colour code would glue onto a redacted value)."""
    plain = (int, float, bool, type(None))
    return {
        k: v if isinstance(v, plain) else redact(str(v))
        for k, v in event.items()
        if k not in _CONSOLE_OMITS
    }


# uvicorn's copy of its message with colour codes: the console colours lines itself.
_CONSOLE_OMITS = frozenset({"color_message"})
