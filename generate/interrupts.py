"""Ctrl-C and SIGTERM during training: the first asks for a save and a clean stop, a second leaves at once."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from generate.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """While entered, SIGINT/SIGTERM set `signum` instead of killing the process; a second one raises.

    The training loop looks at `signum` after each step, saves last.pt and stops. A second signal
    raises Interrupted where the process is: every checkpoint write is atomic (temporary file,
    rename), so leaving mid-save keeps the previous file whole.
    """

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce = announce
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in SIGNALS:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        if self.announce:
            name = signal.Signals(signum).name
            sys.stderr.write(f"\n{name}: finishing this step and saving last.pt (again to leave at once)\n")
