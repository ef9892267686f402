"""The entry points around the service, in-process: ``app.main.app``, the ``convewma``
command's shared behaviour (version, help, one-line errors, exit statuses), the OpenAPI
request body of ``/smooth`` and gunicorn's start-up check."""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import logging
import os
import sys
from types import SimpleNamespace

import pytest
import torch
from fastapi import FastAPI

import app.main
from app.api.docs import SMOOTH_REQUESTS
from app.cli import _one_line, _quiet_stdout, main, smooth
from app.cli.common import CliError, HelpFormatter, int_in_range, output_path
from app.serving.gunicorn import ConvEWMAWorker
from app.serving.settings import Settings


def test_the_module_level_app_is_built_once_on_first_access():
    first = app.main.app
    assert isinstance(first, FastAPI)
    assert app.main.app is first


def test_other_module_attributes_are_refused_by_name():
    with pytest.raises(AttributeError) as caught:
        _ = app.main.application
    assert caught.value.args == ("application",)


def test_version_names_the_package_torch_and_python(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    version = importlib.metadata.version("convewma-service")
    python = sys.version.split()[0]
    assert capsys.readouterr().out == f"convewma {version} (torch {torch.__version__}, Python {python})\n"


def test_help_describes_the_command_and_needs_a_subcommand(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ConvEWMA: learned exponential smoothing" in out
    assert "start the HTTP service (settings: CONVEWMA_* variables)" in out
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "the following arguments are required: command" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (ValueError("first line\nsecond line"), "first line second line"),
        (OSError(), "OSError"),
        (CliError(""), "CliError"),
    ],
)
def test_an_error_is_one_line_with_a_bold_red_prefix(exc, message):
    text = _one_line("smooth", exc)
    assert text.plain == f"convewma smooth: error: {message}"
    (span,) = text.spans
    assert (span.start, span.end, str(span.style)) == (0, len("convewma smooth: error:"), "bold red")


@pytest.mark.parametrize(
    ("raised", "status"), [(KeyboardInterrupt, 130), (BrokenPipeError, 0), (CliError("no"), 2)]
)
def test_exit_statuses(monkeypatch, capsys, raised, status):
    def run(args: object, console: object) -> None:
        raise raised

    monkeypatch.setattr(smooth, "run", run)
    monkeypatch.setattr("app.cli._quiet_stdout", lambda: None)  # stdout is pytest's here
    assert main(["smooth", "--data", "x.csv"]) == status
    err = capsys.readouterr().err
    assert err == ("convewma smooth: error: no\n" if status == 2 else "")


def test_after_a_broken_pipe_stdout_points_at_dev_null(monkeypatch, tmp_path):
    with (tmp_path / "out").open("w") as stdout:
        monkeypatch.setattr(sys, "stdout", stdout)
        _quiet_stdout()
        assert os.path.realpath(f"/proc/self/fd/{stdout.fileno()}") == os.devnull


class NoDescriptor(io.StringIO):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def fileno(self) -> int:
        raise self.error


@pytest.mark.parametrize("error", [OSError("no descriptor"), ValueError("closed file")])
def test_quieting_a_stdout_without_a_descriptor_is_silent(monkeypatch, error):
    monkeypatch.setattr(sys, "stdout", NoDescriptor(error))
    _quiet_stdout()


def formatted_help(**kwargs: object) -> str:
    parser = argparse.ArgumentParser(prog="p", formatter_class=HelpFormatter)
    parser.add_argument("--opt", **kwargs)  # type: ignore[arg-type]
    parser.add_argument("pos", help="a positional default")
    return " ".join(parser.format_help().split())


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"default": 3, "help": "count"}, "--opt OPT count (default: 3)"),
        ({"required": True, "help": "count"}, "--opt OPT count (required)"),
        ({"default": None, "help": "count"}, "--opt OPT count"),
        ({"default": 3, "help": "count (default: three)"}, "--opt OPT count (default: three)"),
        ({"default": argparse.SUPPRESS, "help": "count"}, "--opt OPT count"),
    ],
)
def test_help_says_required_or_the_default_once(kwargs, shown):
    text = formatted_help(**kwargs)
    assert text.endswith(shown)  # the options come last
    assert "pos a positional default" in text  # positionals get no suffix


@pytest.mark.parametrize(
    ("low", "high", "text", "error"),
    [
        (1, 32, "x", "must be an integer, got 'x'"),
        (1, 32, "0", "must be in [1, 32], got 0"),
        (1, 32, "33", "must be in [1, 32], got 33"),
        (2, None, "1", "must be >= 2, got 1"),
    ],
)
def test_integer_options_name_their_range(low, high, text, error):
    parse = int_in_range(low, high)
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        parse(text)
    assert str(caught.value) == error


@pytest.mark.parametrize(("low", "high", "text"), [(1, 32, "1"), (1, 32, "32"), (2, None, "10000")])
def test_integer_options_accept_their_bounds(low, high, text):
    assert int_in_range(low, high)(text) == int(text)


def test_out_paths_are_checked_before_any_work(tmp_path):
    assert output_path(str(tmp_path / "a.csv")) == tmp_path / "a.csv"
    cases = {
        str(
            tmp_path / "missing" / "a.csv"
        ): f"the folder {tmp_path / 'missing'} does not exist (create it first)",
        str(tmp_path / "file.txt" / "a.csv"): f"{tmp_path / 'file.txt'} is not a folder",
        str(tmp_path): "is a folder, not a file name",
    }
    (tmp_path / "file.txt").write_text("x")
    for text, reason in cases.items():
        with pytest.raises(CliError) as caught:
            output_path(text)
        assert str(caught.value) == f"--out {text}: {reason}"


def test_the_smooth_request_body_carries_the_schema_and_every_named_example():
    body = app.main.create_app(Settings(device="cpu")).openapi()["paths"]["/smooth"]["post"]["requestBody"]
    assert body["required"] is True
    (content,) = body["content"].items()
    assert content[0] == "application/json"
    assert set(content[1]) == {"schema", "examples"}
    assert content[1]["examples"] == SMOOTH_REQUESTS
    assert "series" in content[1]["schema"]["properties"]


def test_gunicorn_is_told_the_graceful_timeout_it_needs(monkeypatch, caplog):
    monkeypatch.setenv("CONVEWMA_DRAIN_S", "4")
    monkeypatch.setenv("CONVEWMA_REQUEST_TIMEOUT_S", "20")
    with caplog.at_level(logging.WARNING, logger="test.gunicorn"):
        ConvEWMAWorker.check_config(SimpleNamespace(graceful_timeout=28), logging.getLogger("test.gunicorn"))
    assert caplog.messages == [
        "--graceful-timeout 28 s may cut requests short on SIGTERM: "
        "CONVEWMA_DRAIN_S + CONVEWMA_REQUEST_TIMEOUT_S + 5 = 29 s"
    ]


def test_gunicorn_check_leaves_bad_settings_to_the_workers(monkeypatch, caplog):
    monkeypatch.setenv("CONVEWMA_DRAIN_S", "not a number")
    with caplog.at_level(logging.WARNING, logger="test.gunicorn"):
        ConvEWMAWorker.check_config(SimpleNamespace(graceful_timeout=1), logging.getLogger("test.gunicorn"))
    assert caplog.messages == []
