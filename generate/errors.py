"""UserError: a mistake the user can fix, shown by every entry point as one line with no traceback."""


class UserError(Exception):
    """A mistake the user can fix. The CLI shows it as one line, with no traceback."""
