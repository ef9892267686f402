"""``convewma serve`` in this process: the device check on machines with and without CUDA,
the refusals before uvicorn starts (one line, exit 2), the uvicorn configuration it runs
(``server_config``) and the open-files warning. The blocking run itself is left to the
subprocess tests (tests/integration/test_server.py); here ``ExitZeroServer.run`` only
records the configuration it was given."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import uvicorn

from app.cli import main
from app.cli.common import CliError
from app.cli.serve import check_device, server_config
from app.serving.drain import ExitZeroServer
from app.serving.settings import Settings
from tests.reference import SHIPPED_WEIGHTS
from tests.servers import kept_loggers

# --- the device check -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["auto", "cpu", "cpu:0"])
def test_devices_every_machine_has_pass(name):
    check_device(name)


def test_a_name_torch_cannot_read_is_refused():
    with pytest.raises(CliError) as error:
        check_device("cudax")
    assert str(error.value) == "invalid settings: device: 'cudax' is not a device (auto, cpu, cuda or cuda:N)"


def test_a_gpu_no_machine_has_is_refused():
    with pytest.raises(CliError) as error:
        check_device("cuda:99")
    assert str(error.value).startswith("invalid settings: device: 'cuda:99' but ")


@pytest.fixture
def machine(monkeypatch):
    """Pretend to be a machine: torch built with CUDA ``build`` (None: without), ``count``
    visible GPUs."""

    def pretend(build: str | None, count: int) -> None:
        monkeypatch.setattr(torch.version, "cuda", build)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return pretend


NO_CUDA_BUILD = f"this torch ({torch.__version__}) is built without CUDA; use --device cpu or auto"


@pytest.mark.parametrize(
    ("build", "count", "name", "refusal"),
    [
        (None, 0, "cuda", f"'cuda' but {NO_CUDA_BUILD}"),
        (None, 0, "cuda:0", f"'cuda:0' but {NO_CUDA_BUILD}"),
        ("12.4", 0, "cuda", "'cuda' but no CUDA device is visible; use --device cpu or auto"),
        ("12.4", 0, "cuda:1", "'cuda:1' but no CUDA device is visible; use --device cpu or auto"),
        ("12.4", 2, "cuda", None),
        ("12.4", 2, "cuda:0", None),
        ("12.4", 2, "cuda:1", None),
        ("12.4", 2, "cuda:2", "'cuda:2' but 2 CUDA device(s) are visible (cuda:0 .. cuda:1)"),
        ("12.4", 4, "cuda:7", "'cuda:7' but 4 CUDA device(s) are visible (cuda:0 .. cuda:3)"),
        ("12.4", 0, "cpu", None),
        (None, 0, "auto", None),
    ],
)
def test_the_device_check_on_each_kind_of_machine(machine, build, count, name, refusal):
    machine(build, count)
    if refusal is None:
        check_device(name)
        return
    with pytest.raises(CliError) as error:
        check_device(name)
    assert str(error.value) == f"invalid settings: device: {refusal}"


# --- the uvicorn configuration ----------------------------------------------------------


@pytest.fixture
def loggers() -> Iterator[None]:
    """A uvicorn configuration sets up logging for the whole process: put it back after."""
    with kept_loggers():
        yield


@pytest.mark.parametrize(
    ("request_timeout_s", "idle_timeout_s", "graceful", "keep_alive"),
    [(30.0, 10.0, 35, 10), (2.9, 0.2, 7, 1), (0.5, 2.5, 5, 3), (100.0, 1.0, 105, 1)],
)
def test_server_config_is_what_serve_runs(
    loggers, monkeypatch, request_timeout_s, idle_timeout_s, graceful, keep_alive
):
    pristine = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    # uvicorn takes its worker count from here unless it is given one: serve runs one process.
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    settings = Settings(
        host="127.0.0.3",
        port=8123,
        log_level="warning",
        device="cpu",
        request_timeout_s=request_timeout_s,
        idle_timeout_s=idle_timeout_s,
    )
    config = server_config(settings)
    assert (config.host, config.port, config.workers, config.log_level) == ("127.0.0.3", 8123, 1, "warning")
    assert config.app.state.settings is settings  # the app serves these settings
    # uvicorn's graceful stop outlasts a request's deadline; keep-alive is whole seconds, >= 1.
    assert config.timeout_graceful_shutdown == graceful
    assert config.timeout_keep_alive == keep_alive
    # The guarded protocol bound to these settings, not uvicorn's "auto".
    assert isinstance(config.http, type)
    assert config.http.guard.max_connections == settings.max_connections
    assert config.log_config["loggers"]["convewma"] == {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    assert {k: v for k, v in config.log_config["loggers"].items() if k != "convewma"} == pristine["loggers"]
    assert pristine == uvicorn.config.LOGGING_CONFIG  # uvicorn's own default is left as it was
    # As configured: the service's log lines go to uvicorn's handler at INFO, only there.
    log = logging.getLogger("convewma")
    assert (log.level, log.propagate, [h.name for h in log.handlers]) == (logging.INFO, False, ["default"])


# --- serve's refusals, before uvicorn starts --------------------------------------------


def serve(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["serve", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (
            ["--port", "0"],
            {"CONVEWMA_MAX_BATCH_SIZE": "0"},
            "invalid settings: port: Input should be greater than or equal to 1; "
            "max_batch_size: Input should be greater than or equal to 1",
        ),
        (
            [],
            {"CONVEWMA_MAX_LENGTH": "10", "CONVEWMA_MAX_BATCH_VALUES": "5"},
            "invalid settings: settings: Value error, max_length (10) must not exceed max_batch_values (5): "
            "a single series must fit in one batch",
        ),
        (
            ["--device", "tpu"],
            {},
            "invalid settings: settings: Value error, device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'",
        ),
        (["--host", ""], {"CONVEWMA_LOG_LEVEL": "loud"}, "invalid settings: log_level: Input should be "),
        (
            ["--device", "cudax"],
            {},
            "invalid settings: device: 'cudax' is not a device (auto, cpu, cuda or cuda:N)",
        ),
        (["--device", "cuda:99"], {}, "invalid settings: device: 'cuda:99' but "),
        ([], {"CONVEWMA_DEVICE": "cuda:99"}, "invalid settings: device: 'cuda:99' but "),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, err = serve(argv, capsys)
    assert status == 2
    (line,) = err.splitlines()
    assert line.startswith(f"convewma serve: error: {message}")


@pytest.mark.parametrize("where", ["option", "environment"])
def test_missing_weights_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, where):
    missing = tmp_path / "missing.safetensors"
    if where == "environment":
        monkeypatch.setenv("CONVEWMA_WEIGHTS", str(missing))
    status, err = serve(
        ["--device", "cpu", *(["--weights", str(missing)] if where == "option" else [])], capsys
    )
    assert status == 2
    (line,) = err.splitlines()
    assert line.startswith("convewma serve: error: ")
    assert str(missing) in line
    assert "not found" in line


# --- what serve runs: the options reach the settings, the open-files warning ------------


@pytest.fixture
def runs(monkeypatch, loggers) -> list[uvicorn.Config]:
    """The configurations ``ExitZeroServer.run`` was given, instead of serving them."""
    configs: list[uvicorn.Config] = []

    def run(self: ExitZeroServer, sockets: object = None) -> None:
        configs.append(self.config)

    monkeypatch.setattr(ExitZeroServer, "run", run)
    monkeypatch.setattr("app.serving.protocol.raise_open_files_limit", lambda: 100_000)
    return configs


def test_options_override_the_environment(tmp_path, monkeypatch, capsys, runs):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(SHIPPED_WEIGHTS.read_bytes())
    for name, value in {"HOST": "0.0.0.0", "PORT": "9000", "DEVICE": "auto", "WEIGHTS": "/nowhere"}.items():
        monkeypatch.setenv(f"CONVEWMA_{name}", value)
    argv = ["--host", "127.0.0.2", "--port", "8123", "--weights", str(weights), "--device", "cpu"]
    assert main(["serve", *argv]) == 0
    (config,) = runs
    settings = config.app.state.settings
    assert (config.host, config.port, settings.weights, settings.device) == (
        "127.0.0.2",
        8123,
        weights,
        "cpu",
    )


def test_the_environment_is_used_where_no_option_is_given(monkeypatch, capsys, runs):
    monkeypatch.setenv("CONVEWMA_PORT", "9001")
    monkeypatch.setenv("CONVEWMA_DEVICE", "cpu")
    assert main(["serve"]) == 0
    (config,) = runs
    settings = config.app.state.settings
    assert (config.host, config.port, settings.device) == ("127.0.0.1", 9001, "cpu")
    assert Path(settings.weights) == Path(Settings.model_fields["weights"].default)


@pytest.mark.parametrize(
    ("limit", "low"),
    # 100 connections want 2 * 100 + 64 = 264 descriptors.
    [(None, False), (263, True), (264, False), (100_000, False), (0, True)],
)
def test_a_low_open_files_limit_is_a_warning(monkeypatch, capsys, runs, limit, low):
    monkeypatch.setattr("app.serving.protocol.raise_open_files_limit", lambda: limit)
    monkeypatch.setenv("CONVEWMA_MAX_CONNECTIONS", "100")
    assert main(["serve", "--device", "cpu"]) == 0
    assert len(runs) == 1
    lines = capsys.readouterr().err.splitlines()
    expected = [f"INFO:     open files limit {limit}, max_connections 100"]
    if low:
        advice = "raise `ulimit -n` or lower it"
        expected.append(f"WARNING:  open files limit {limit} is low for max_connections 100: {advice}")
    assert lines == expected
