"""A non-editable install serves the shipped default model.

The wheel is built from a copy of exactly what packaging reads (pyproject.toml,
README.md, app/), installed with --no-deps into a fresh virtual environment that reuses
this interpreter's packages (torch is not reinstalled), and run from a folder outside
the repository, with PYTHONPATH unset, so nothing can come from the checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.reference import REPO_ROOT, SHIPPED_WEIGHTS

WEIGHTS_IN_WHEEL = SHIPPED_WEIGHTS.relative_to(REPO_ROOT).as_posix()  # app/models/convewma.safetensors


def run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(the venv's bin folder, a working folder outside the repository, the environment)."""
    root = tmp_path_factory.mktemp("packaging")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("CONVEWMA_")}
    env["PYTHONNOUSERSITE"] = "1"
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "app", source / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    wheels = root / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, source], cwd=root, env=env)
    (wheel,) = wheels.glob("convewma_service-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read(WEIGHTS_IN_WHEEL) == SHIPPED_WEIGHTS.read_bytes()

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=root, env=env)
    bin_dir = venv / "bin"
    # pip itself comes from the system site-packages; it installs into the venv.
    run(
        [bin_dir / "python", "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", wheel],
        cwd=root,
        env=env,
    )
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return bin_dir, elsewhere, env


PROBE = """
import json, app, app.core.paths
from app.serving.settings import Settings
from app.core.weights import load_weights
loaded = load_weights(Settings().weights)
print(json.dumps({"package": app.__file__, "default": str(app.core.paths.DEFAULT_WEIGHTS),
                  "settings": str(Settings().weights), "sha256": loaded.sha256}))
"""


@pytest.mark.slow
def test_installed_package_loads_its_own_default_weights(installed):
    bin_dir, elsewhere, env = installed
    found = json.loads(run([bin_dir / "python", "-c", PROBE], cwd=elsewhere, env=env).stdout)
    site = bin_dir.parent.resolve()
    for key in ("package", "default", "settings"):
        assert Path(found[key]).resolve().is_relative_to(site), (key, found[key])
    assert found["default"] == found["settings"]
    assert found["sha256"] == hashlib.sha256(SHIPPED_WEIGHTS.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("index", ["no index", "pandas index"])
def test_installed_convewma_smooth_uses_the_shipped_model(installed, index):
    bin_dir, elsewhere, env = installed
    data = elsewhere / f"{index.replace(' ', '-')}.csv"
    texts = {"no index": "x\n1.0\n2.0\n4.0\n", "pandas index": ",x\n0,1.0\n1,2.0\n2,4.0\n"}
    data.write_text(texts[index])
    prefix = "," if index == "pandas index" else ""  # the index header (empty) comes first
    result = run([bin_dir / "convewma", "smooth", "--data", data.name], cwd=elsewhere, env=env)
    (summary,) = result.stderr.splitlines()
    assert f"model {bin_dir.parent.resolve()}" in summary
    lines = result.stdout.splitlines()
    assert lines[0] == prefix + "series," + ",".join(
        f"x:{c}" for c in ("infl", "realint", "tbilrate", "unemp")
    )
    assert len(lines) == 4
