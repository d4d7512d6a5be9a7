"""The one exception type for user mistakes.

Code raises `LmfuseError` for anything the user can fix (a bad config key, missing data, a
vocab mismatch). The CLI prints it as a single line and exits with status 2, so the user
never sees a traceback from deep inside a library for their own mistake.
"""


class LmfuseError(Exception):
    """A user-facing error: its message names the cause and the fix, on one line."""
