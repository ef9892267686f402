"""Where the shipped files live.

The default weights are package data (``app/models/``), so every install finds them: a
checkout, an editable install, a wheel or the container image.  ``PROJECT_ROOT`` is the
directory above the package: the repository root in a checkout, where the training data
(``models/data/``) and the model card live; an installed package has neither.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # app/, which holds models/
PROJECT_ROOT = PACKAGE_DIR.parent
DEFAULT_WEIGHTS = PACKAGE_DIR / "models" / "convewma.safetensors"
