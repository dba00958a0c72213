"""What every entry point shares: user errors, device choice and the Hydra wrapper."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch


class UserError(Exception):
    """A mistake the user can fix. The CLI shows it as one line, with no traceback."""


def resolve_device(name: Any) -> torch.device:
    """Map `auto | cpu | cuda` (str or Device enum) to a torch.device, refusing cuda without CUDA."""
    name = getattr(name, "value", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda was asked for but CUDA is not available; use device=cpu or device=auto")
    return torch.device(name)


def _config_error_line(err: Exception) -> str:
    """Hydra/OmegaConf's several-line composition errors, folded into one line with the fix."""
    noise = ("full_key", "reference_type", "object_type", "See https", "To append to your config", "Config search path")
    parts: list[str] = []
    cause: BaseException | None = err
    while cause is not None:  # the useful detail ("Key 'x' not in 'ModelConfig'") is often the cause
        for line in str(cause).splitlines():
            line = line.strip()
            if line.startswith("provider="):
                break
            if line and not line.startswith(noise) and line not in parts:
                parts.append(line)
        cause = cause.__cause__
    return " ".join(parts).replace(" dataset_schema", "").replace(" model_schema", "").replace(" train_schema", "")


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose the config once from the command line, so a typo or a wrong type is one line, exit 2.

    Multirun sweeps and Hydra's own flags are left to Hydra, which reports them itself.
    """
    if any(arg.startswith("-") for arg in args):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from generate.config import CONFIG_DIR

    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            compose(config_name=config_name, overrides=args)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        hint = f"see every key and its type with `python -m generate.{_MODULES.get(config_name, 'train')} --cfg job`"
        if "LexerNoViableAlt" in type(err).__name__ or "override_grammar" in str(err):
            hint = "quote values with spaces or symbols like this: 'prompt=\"ROMEO: #1\"'"
        print(f"error: bad command-line setting: {_config_error_line(err)}; {hint}", file=sys.stderr)
        sys.exit(2)


_MODULES = {"config": "train", "sample": "sample", "evaluate": "evaluate", "export": "export", "quality": "quality"}


def hydra_entry(task: Callable[[Any], Any], config_name: str) -> Callable[[], None]:
    """Wrap `task(cfg)` in @hydra.main; turn UserError into a one-line message and exit code 2."""
    import hydra

    from generate.config import CONFIG_DIR, register_configs

    register_configs()

    @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
    def hydra_main(cfg: Any) -> None:
        try:
            task(cfg)
        except UserError as err:
            # One write call: under torchrun several ranks may report at once, and a line
            # written in one piece (under the pipe's atomic size) is never interleaved.
            sys.stderr.write(f"error: {err}\n")
            sys.stderr.flush()
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    def main() -> None:
        check_overrides(config_name, sys.argv[1:])
        hydra_main()

    return main
