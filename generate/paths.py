"""Where the project's own files are, and how checkpoints write paths inside it portably."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries conf/, datasets/ and checkpoints/pretrained/ in generate/_bundled/ (setup.py puts
# them there); a source checkout or an editable install reads them from the repository's top level.
_BUNDLED = PACKAGE_DIR / "_bundled"
PROJECT_ROOT = _BUNDLED if (_BUNDLED / "conf").is_dir() else PACKAGE_DIR.parent
CONFIG_DIR = str(PROJECT_ROOT / "conf")  # built from __file__ so the CLI works from any folder
SHIPPED_DIR = PROJECT_ROOT / "checkpoints" / "pretrained"
HOME_VARIABLE = "GENERATE_HOME"


def home() -> Path:
    """Where your runs, samples and token caches go: $GENERATE_HOME, else the current folder."""
    return Path(os.environ.get(HOME_VARIABLE) or ".")
ROOT_MARK = "${project_root:}"  # the one interpolation a stored path may hold


def portable_paths(value: Any) -> Any:
    """Paths inside this project written as ${project_root:}/..., so a checkpoint still finds the
    bundled data when the project is cloned somewhere else."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v) for v in value]
    root = str(PROJECT_ROOT)
    if isinstance(value, str) and (value == root or value.startswith(root + "/")):
        return ROOT_MARK + value[len(root):]
    return value


def expand_project_root(value: str | None) -> str | None:
    """A stored path with its ${project_root:} prefix expanded; nothing else is ever interpolated."""
    if isinstance(value, str) and value.startswith(ROOT_MARK):
        return str(PROJECT_ROOT) + value[len(ROOT_MARK):]
    return value
