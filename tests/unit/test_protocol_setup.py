"""How the connection guards are set up (app/serving/protocol.py): the class uvicorn's
``--http app.serving.protocol:HttpProtocol`` loads, and the open-files limit ``serve`` raises.
The guards at work: tests/api/test_connections.py."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from app.serving import protocol
from app.serving.protocol import GuardedHttpToolsProtocol, raise_open_files_limit


def test_http_protocol_is_bound_to_the_environment_once(monkeypatch):
    monkeypatch.delitem(protocol.__dict__, "HttpProtocol", raising=False)
    monkeypatch.setenv("CONVEWMA_MAX_CONNECTIONS", "17")
    monkeypatch.setenv("CONVEWMA_HEADER_TIMEOUT_S", "2.5")
    first = protocol.HttpProtocol
    assert issubclass(first, GuardedHttpToolsProtocol)
    assert (first.guard.max_connections, first.guard.header_timeout_s) == (17, 2.5)
    monkeypatch.setenv("CONVEWMA_MAX_CONNECTIONS", "99")
    assert protocol.HttpProtocol is first  # read once, as uvicorn imports it once


def test_other_names_are_refused_by_name():
    with pytest.raises(AttributeError) as caught:
        _ = protocol.HttpProtocols
    assert caught.value.args == ("HttpProtocols",)


@pytest.fixture
def lowered_soft_limit() -> Iterator[tuple[int, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, hard - 1) if hard != resource.RLIM_INFINITY else min(soft, 4096) - 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        yield lowered, hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_open_files_limit_is_raised_to_the_hard_limit(lowered_soft_limit):
    lowered, hard = lowered_soft_limit
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == lowered
    assert raise_open_files_limit() == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@pytest.mark.parametrize("error", [ValueError, OSError])
def test_a_hard_limit_the_kernel_refuses_leaves_the_soft_limit_in_effect(monkeypatch, error):
    # macOS: an unlimited hard limit that setrlimit refuses (ValueError or OSError by version).
    limits = {resource.RLIMIT_NOFILE: (256, resource.RLIM_INFINITY)}

    def refuse(which: int, wanted: tuple[int, int]) -> None:
        raise error("not allowed")

    monkeypatch.setattr(resource, "getrlimit", lambda which: limits[which])
    monkeypatch.setattr(resource, "setrlimit", refuse)
    assert raise_open_files_limit() == 256
