"""Gunicorn worker: ``gunicorn -k app.serving.gunicorn.ConvEWMAWorker app.main:app``.

Any uvicorn worker drains on SIGTERM, ``-k uvicorn_worker.UvicornWorker`` included: the
drain is the app's (app/serving/drain.py). This one adds what the app cannot do by itself:

- the connection guards of ``convewma serve`` (app/serving/protocol.py: idle and header
  timeouts, header size, connection limit), read from the same ``CONVEWMA_*`` variables;
- a warning at start when ``--graceful-timeout`` (gunicorn's default: 30 s) is shorter
  than a drain plus the longest request, ``CONVEWMA_DRAIN_S + CONVEWMA_REQUEST_TIMEOUT_S
  + 5`` s: gunicorn kills workers still running after it.

Batches form inside one worker: each worker holds its own model, batcher and memory
budget (size the machine for ``--workers`` times one replica).
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ValidationError
from uvicorn_worker import UvicornWorker

from app.serving.settings import Settings

SHUTDOWN_MARGIN_S = 5  # uvicorn's and the lifespan's shutdown, the interpreter's exit


def graceful_timeout_needed(settings: Settings) -> int:
    """Seconds a worker may take from SIGTERM to exit: drain, longest request, margin."""
    return int(settings.drain_s + settings.request_timeout_s) + SHUTDOWN_MARGIN_S


class ConvEWMAWorker(UvicornWorker):  # type: ignore[misc]  # gunicorn is untyped
    """``uvicorn_worker.UvicornWorker`` with the connection guards of app/serving/protocol.py."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {"loop": "auto", "http": "app.serving.protocol:HttpProtocol"}

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        # Called by gunicorn's master before it starts workers.
        try:
            needed = graceful_timeout_needed(Settings())
        except ValidationError:
            return  # each worker stops with the reason when it loads the app
        if cfg.graceful_timeout < needed:
            log.warning(
                "--graceful-timeout %s s may cut requests short on SIGTERM: "
                "CONVEWMA_DRAIN_S + CONVEWMA_REQUEST_TIMEOUT_S + %d = %d s",
                cfg.graceful_timeout,
                SHUTDOWN_MARGIN_S,
                needed,
            )
