"""``convewma serve``: the HTTP service under uvicorn, settings checked before it starts."""

from __future__ import annotations

import argparse
import copy
from typing import TYPE_CHECKING

import torch
from rich.console import Console

from app.cli.common import CliError
from app.core.paths import DEFAULT_WEIGHTS
from app.core.weights import load_weights

if TYPE_CHECKING:
    import uvicorn

    from app.serving.settings import Settings


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    # Every option defaults to None (the setting's own source) and says so in its help.
    serve = commands.add_parser("serve", help="start the HTTP service (settings: CONVEWMA_* variables)")
    serve.add_argument("--host", help="listen address (default: $CONVEWMA_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: $CONVEWMA_PORT, else 8000)")
    serve.add_argument(
        "--weights",
        metavar="FILE",
        help=f"safetensors model (default: $CONVEWMA_WEIGHTS, else {DEFAULT_WEIGHTS})",
    )
    serve.add_argument(
        "--device",
        help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default: $CONVEWMA_DEVICE, else auto)",
    )


def check_device(name: str) -> None:
    """Refuse a device this machine lacks before the server starts, in one line.

    The service resolves the device only inside its lifespan, where a failure is a
    traceback and exit status 3; ``serve`` calls this first.
    """
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CliError(
            f"invalid settings: device: {name!r} is not a device (auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        reason = (
            f"this torch ({torch.__version__}) is built without CUDA"
            if torch.version.cuda is None
            else "no CUDA device is visible"
        )
        raise CliError(f"invalid settings: device: {name!r} but {reason}; use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise CliError(
            f"invalid settings: device: {name!r} but {count} CUDA device(s) are visible"
            f" (cuda:0 .. cuda:{count - 1})"
        )


def run(args: argparse.Namespace, console: Console) -> None:
    """``convewma serve``: one process, its batches drained on SIGTERM."""
    import logging

    from pydantic import ValidationError

    from app.serving.drain import ExitZeroServer
    from app.serving.protocol import raise_open_files_limit
    from app.serving.settings import Settings

    overrides = {
        k: v
        for k, v in (
            ("host", args.host),
            ("port", args.port),
            ("weights", args.weights),
            ("device", args.device),
        )
        if v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise CliError(
            "invalid settings: "
            + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        ) from None
    check_device(settings.device)  # a missing GPU: one line, exit 2 (not a traceback, exit 3)
    load_weights(settings.weights)  # fail fast, in one line, before uvicorn starts
    config = server_config(settings)
    # Each connection is a file descriptor; refused ones, briefly, too.
    open_files = raise_open_files_limit()
    log = logging.getLogger("convewma")
    log.info("open files limit %s, max_connections %d", open_files, settings.max_connections)
    if open_files is not None and open_files < 2 * settings.max_connections + 64:
        log.warning(
            "open files limit %d is low for max_connections %d: raise `ulimit -n` or lower it",
            open_files,
            settings.max_connections,
        )
    ExitZeroServer(config).run()  # a drained, graceful stop exits 0


def server_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration ``convewma serve`` runs (tests run it in a thread too)."""
    import math

    import uvicorn

    from app.main import create_app
    from app.serving.protocol import http_protocol

    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["convewma"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return uvicorn.Config(
        create_app(settings),  # its lifespan drains on SIGTERM (app/serving/drain.py)
        host=settings.host,
        port=settings.port,
        workers=1,  # batches form inside one process; scale out with replicas
        log_level=settings.log_level,
        log_config=log_config,
        timeout_graceful_shutdown=int(settings.request_timeout_s) + 5,
        # Idle, header and connection limits (app/serving/protocol.py); httptools, as "auto" picks.
        http=http_protocol(settings),
        # The protocol uses idle_timeout_s as is; uvicorn's option is whole seconds.
        timeout_keep_alive=max(1, math.ceil(settings.idle_timeout_s)),
    )
