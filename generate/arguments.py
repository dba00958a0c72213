"""The command line as typed → as Hydra needs it: free-text values quoted, argparse habits refused with the fix."""

from __future__ import annotations

import re
import sys

HYDRA_FLAGS = {"--cfg", "-c", "--resolve", "--package", "-p", "--info", "-i", "--hydra-help", "--multirun", "-m",
               "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--shell-completion", "-sc",
               "--run", "-r", "--version", "--experimental-rerun"}
SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./:+@~%")


def quote_text(value: str, literal: bool = False) -> str:
    """A value as a Hydra single-quoted string: commas, `!` and quotes stay text; `${` too when `literal`."""
    value = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value)  # backslashes before a quote or the end
    value = value.replace("'", "\\'")
    return "'" + (value.replace("${", "\\${") if literal else value) + "'"


def prepare_arguments(command: str, args: list[str]) -> list[str]:
    """The command line as Hydra needs it: free-text values quoted, argparse habits refused with the fix."""
    from generate.help import setting_names, text_settings

    names, texts, lists = setting_names(command), text_settings(command), text_settings(command, lists=True)
    for i, arg in enumerate(args):
        if arg.startswith("-") and arg.split("=", 1)[0] not in HYDRA_FLAGS:
            key = arg.lstrip("-").split("=", 1)[0]
            if key in names:
                value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "VALUE")
                fail(f"write settings as key=value without dashes: {key}={value} (not {arg}); "
                     f"see python -m generate.{command} --help")
    if any(a in ("-m", "--multirun") for a in args):
        return args  # a sweep: commas in values are the user's to mean
    prepared = []
    for arg in args:
        key, _, value = arg.partition("=")
        quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""
        if key in texts and value and not quoted and not set(value) <= SAFE:
            arg = f"{key}={quote_text(value, literal=key == 'prompt')}"  # a prompt is text, never an interpolation
        elif key in lists and value and not value.startswith("["):  # ensemble=a.pt,b.pt means [a.pt,b.pt]
            arg = f"{key}=[{value}]"
        prepared.append(arg)
    return prepared


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
