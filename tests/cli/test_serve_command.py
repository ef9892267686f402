"""``convewma serve`` in-process: the uvicorn configuration it runs, its refusals before the
server starts, and the open-files check. The server itself runs in
tests/integration/test_server.py (a process) and tests/api/test_connections.py (a thread)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
import uvicorn
from fastapi import FastAPI

from app.cli import main
from app.cli.common import CliError
from app.cli.serve import check_device, server_config
from app.serving import drain, protocol
from app.serving.protocol import GuardedHttpToolsProtocol
from app.serving.settings import Settings
from tests.reference import SHIPPED_WEIGHTS
from tests.servers import kept_loggers


@pytest.fixture(autouse=True)
def loggers_put_back() -> Iterator[None]:
    with kept_loggers():  # a uvicorn configuration sets up logging for the whole process
        yield


@pytest.mark.parametrize(("idle_s", "keep_alive_s"), [(0.2, 1), (2.5, 3), (10.0, 10)])
def test_server_config_is_the_one_serve_runs(idle_s, keep_alive_s):
    pristine = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    settings = Settings(
        host="127.0.0.1",
        port=8123,
        device="cpu",
        log_level="warning",
        request_timeout_s=17,
        idle_timeout_s=idle_s,
        max_connections=7,
        max_header_bytes=5000,
        header_timeout_s=3,
    )
    config = server_config(settings)
    assert (config.host, config.port, config.workers, config.log_level) == ("127.0.0.1", 8123, 1, "warning")
    assert config.timeout_graceful_shutdown == 17 + 5  # the longest request, then the lifespan
    assert config.timeout_keep_alive == keep_alive_s == max(1, math.ceil(idle_s))
    assert isinstance(config.app, FastAPI)
    assert config.app.state.settings is settings
    assert issubclass(config.http, GuardedHttpToolsProtocol)
    guard = config.http.guard
    assert (guard.max_connections, guard.max_header_bytes, guard.header_timeout_s, guard.idle_timeout_s) == (
        7,
        5000,
        3,
        idle_s,
    )
    assert config.log_config["loggers"]["convewma"] == {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    # uvicorn's own default is left as it was (the config works on a copy).
    assert pristine == uvicorn.config.LOGGING_CONFIG


@pytest.mark.parametrize("name", ["auto", "cpu", "cpu:0", "meta"])
def test_devices_this_machine_has_pass(name):
    check_device(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("gpu", "invalid settings: device: 'gpu' is not a device (auto, cpu, cuda or cuda:N)"),
        ("AUTO", "invalid settings: device: 'AUTO' is not a device (auto, cpu, cuda or cuda:N)"),
    ],
)
def test_a_name_that_is_not_a_device_is_refused_in_words(name, reason):
    with pytest.raises(CliError) as caught:
        check_device(name)
    assert str(caught.value) == reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine has the device")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_refused_with_the_reason(name):
    with pytest.raises(CliError) as caught:
        check_device(name)
    reason = (
        f"this torch ({torch.__version__}) is built without CUDA"
        if torch.version.cuda is None
        else "no CUDA device is visible"
    )
    assert str(caught.value) == (f"invalid settings: device: {name!r} but {reason}; use --device cpu or auto")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "70000"], "convewma serve: error: invalid settings: port: "),
        (["--device", "cuda:7"], "convewma serve: error: invalid settings: device: 'cuda:7' but "),
        (["--weights", "missing.safetensors"], "convewma serve: error: "),
    ],
)
def test_serve_refuses_before_starting_with_one_line_and_exit_2(monkeypatch, capsys, argv, message):
    started = []
    monkeypatch.setattr(drain.ExitZeroServer, "run", lambda self, *a, **k: started.append(self))
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert err.count("\n") == 1
    assert not started


@pytest.mark.parametrize(("open_files", "warned"), [(2 * 10 + 63, True), (2 * 10 + 64, False), (None, False)])
def test_serve_runs_its_config_and_warns_of_a_low_open_files_limit(monkeypatch, capsys, open_files, warned):
    ran: list[uvicorn.Config] = []
    monkeypatch.setattr(drain.ExitZeroServer, "run", lambda self, *a, **k: ran.append(self.config))
    monkeypatch.setattr(protocol, "raise_open_files_limit", lambda: open_files)
    monkeypatch.setenv("CONVEWMA_MAX_CONNECTIONS", "10")
    args = ["serve", "--host", "127.0.0.2", "--port", "8124", "--weights", str(SHIPPED_WEIGHTS)]
    assert main([*args, "--device", "cpu"]) == 0
    logged = capsys.readouterr().err  # uvicorn's log configuration writes to stderr
    (config,) = ran
    assert (config.host, config.port) == ("127.0.0.2", 8124)
    settings = config.app.state.settings
    assert (settings.weights, settings.device, settings.max_connections) == (SHIPPED_WEIGHTS, "cpu", 10)
    warning = f"open files limit {open_files} is low for max_connections 10: raise `ulimit -n` or lower it"
    assert (warning in logged) is warned
    assert f"open files limit {open_files}, max_connections 10" in logged


def test_serve_help_names_its_options_and_defaults(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in (
        "--host HOST listen address (default: $CONVEWMA_HOST, else 127.0.0.1)",
        "--port PORT listen port (default: $CONVEWMA_PORT, else 8000)",
        "--weights FILE safetensors model (default: $CONVEWMA_WEIGHTS, else",
        "--device DEVICE auto (CUDA if available, else CPU), cpu, cuda or cuda:N "
        "(default: $CONVEWMA_DEVICE, else auto)",
    ):
        assert text in out, text


def test_serve_port_must_be_an_integer(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "eighty"])
    assert exited.value.code == 2
    assert "argument --port: invalid int value: 'eighty'" in capsys.readouterr().err
