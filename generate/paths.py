"""Where the project's own files are, and how checkpoints write paths inside it portably."""

from __future__ import annotations

import functools
import importlib.util
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
ROOT_MARK = "${project_root:}"  # the interpolations a stored path may hold: this project's folder,
CORPUS_MARK = "${music21_corpus:}"  # and music21's bundled corpus (folk recipes), wherever each is installed


@functools.cache
def music21_corpus_dir() -> Path:
    """music21's bundled corpus folder, found without importing music21 (that costs over a second)."""
    spec = importlib.util.find_spec("music21")
    return (Path(spec.origin).parent if spec and spec.origin else Path("music21")) / "corpus"


def portable_paths(value: Any) -> Any:
    """Paths inside this project written as ${project_root:}/... (inside music21's corpus as
    ${music21_corpus:}/...), so a checkpoint still finds the data on another machine."""
    if isinstance(value, dict):
        return {k: portable_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v) for v in value]
    if isinstance(value, str):
        for mark, folder in ((ROOT_MARK, str(PROJECT_ROOT)), (CORPUS_MARK, str(music21_corpus_dir()))):
            if value == folder or value.startswith(folder + "/"):
                return mark + value[len(folder):]
    return value


def expand_project_root(value: str | None) -> str | None:
    """A stored path with its ${project_root:} (or ${music21_corpus:}) prefix expanded; nothing else is
    ever interpolated."""
    if isinstance(value, str) and value.startswith(ROOT_MARK):
        return str(PROJECT_ROOT) + value[len(ROOT_MARK):]
    if isinstance(value, str) and value.startswith(CORPUS_MARK):
        return str(music21_corpus_dir()) + value[len(CORPUS_MARK):]
    return value
