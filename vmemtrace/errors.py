"""One exception type for everything a user can get wrong or lack, and the line that says so.

The CLI turns it into a single line on stderr and the exit code it carries, never a traceback.
"""

import sys

# Exit codes shared by every command (verify's are fixed, docs/design.md: 0 pass, 1 fail, 2 could
# not verify; the other commands use 2 for "could not do what was asked").
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CANNOT = 2


class VmemtraceError(Exception):
    """A failure the user can act on; str() is the one line shown."""

    def __init__(self, message: str, exit_code: int = EXIT_CANNOT):
        super().__init__(message)
        self.exit_code = exit_code


def say(message: str) -> None:
    """A progress or outcome line on stderr, as every command prints them."""
    print(f"vmemtrace: {message}", file=sys.stderr, flush=True)
