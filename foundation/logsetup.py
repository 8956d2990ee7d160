"""Logging set-up shared by the daemons: one line per record, tagged with the request id.

Only operation names, ids, statuses and timings are ever logged; callers must not pass
plaintext, keys, PINs or tokens to a logger.
"""

from __future__ import annotations

import contextvars
import logging
import sys

#: The request id of the call being served, set by the server interceptor.
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def setup_logging(level: str = "info", *, stream=None) -> None:
    """Configure the root logger for a daemon: level name, one line per record, request ids."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r} is not one of debug, info, warning, error")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
