"""Where the project's own files are, and how checkpoints write paths inside it portably."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = str(PROJECT_ROOT / "conf")  # built from __file__ so the CLI works from any folder
SHIPPED_DIR = PROJECT_ROOT / "checkpoints" / "pretrained"
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
