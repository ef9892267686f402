"""``uvicorn app.main:app``: the module-level app is built on first access only, once."""

from __future__ import annotations

import importlib

import pytest
from fastapi import FastAPI

import app.main


@pytest.fixture
def fresh_module(monkeypatch):
    """app.main as if just imported: no app built yet (and none left behind)."""
    monkeypatch.delitem(vars(app.main), "app", raising=False)
    yield app.main
    vars(app.main).pop("app", None)


def test_importing_builds_no_app(fresh_module):
    assert "app" not in vars(fresh_module)


def test_the_app_is_built_from_the_environment_once(fresh_module, monkeypatch):
    monkeypatch.setenv("CONVEWMA_MAX_SERIES", "7")
    built = fresh_module.app
    assert isinstance(built, FastAPI)
    assert built.state.settings.max_series == 7  # read from the environment at first access
    assert vars(fresh_module)["app"] is built  # cached: later imports find it as is
    assert fresh_module.app is built
    assert importlib.import_module("app.main").app is built


@pytest.mark.parametrize("name", ["App", "application", "create", "APP"])
def test_other_names_are_attribute_errors_naming_them(fresh_module, name):
    with pytest.raises(AttributeError) as error:
        getattr(fresh_module, name)
    assert error.value.args == (name,)
    assert "app" not in vars(fresh_module)  # a failed look-up builds nothing
