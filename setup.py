"""Build hook: the wheel carries conf/, the bundled datasets and the shipped models inside the package.

The repository keeps them at the top level (one copy); a non-editable build copies them to
generate/_bundled/, where generate/paths.py looks first, so every command works from any folder.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
RESOURCES = {  # top-level folder → what of it ships
    "conf": ["**/*.yaml"],
    "datasets": ["README.md", "tinyshakespeare.txt", "music/*.json.gz", "music/LICENSE*"],
    "checkpoints": ["pretrained/*.pt"],
}


class BuildWithResources(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the repository itself
            return
        target = Path(self.build_lib) / "generate" / "_bundled"
        for folder, patterns in RESOURCES.items():
            for pattern in patterns:
                for source in sorted((ROOT / folder).glob(pattern)):
                    destination = target / folder / source.relative_to(ROOT / folder)
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, destination)


setup(cmdclass={"build_py": BuildWithResources})
