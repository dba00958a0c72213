"""UserError: a mistake the user can fix, shown by every entry point as one line with no traceback."""


class UserError(Exception):
    """A mistake the user can fix. The CLI shows it as one line, with no traceback."""


class Interrupted(KeyboardInterrupt):
    """Training was stopped by a signal (Ctrl-C, SIGTERM) after saving; the CLI exits 128 + signum."""

    def __init__(self, signum: int, explained: bool = False):
        super().__init__(signum)
        self.signum, self.explained = signum, explained  # explained: the trainer said where its work is
