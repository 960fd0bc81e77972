"""One exception type for everything a user can get wrong or lack, and the line that says so.

The CLI turns it into a single line on stderr and the exit code it carries, never a traceback.
"""

import functools
import json
import re
import signal
import sys
from contextlib import contextmanager

# Exit codes shared by every command (verify's are fixed, docs/design.md: 0 pass, 1 fail, 2 could
# not verify; the other commands use 2 for "could not do what was asked").
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_CANNOT = 2
EXIT_USAGE = 64  # a command line that is wrong (sysexits.h EX_USAGE): not a verdict
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports a SIGINT: 128 + 2


class VmemtraceError(Exception):
    """A failure the user can act on; str() is the one line shown."""

    def __init__(self, message: str, exit_code: int = EXIT_CANNOT, reason: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
        self.reason = reason  # for metrics: a short snake_case cause, where the failure has one


# C0 and C1 control characters: a file name or kernel string with a newline or an escape
# sequence must not forge a line of its own or drive the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """text with its control characters shown as escapes (\\x1b), never sent raw."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def say(message: str) -> None:
    """A progress or outcome line on stderr, as every command prints them: one line, whatever
    a file name or kernel string in it holds."""
    print(f"vmemtrace: {printable(message)}", file=sys.stderr, flush=True)


def json_asked(argv=None) -> bool:
    """Whether the command line asks for --json (among vmemtrace's options, not CMD's)."""
    argv = (sys.argv if argv is None else argv)[1:]
    return "--json" in argv[:argv.index("--") if "--" in argv else None]


_SENT: list[bool] = []  # the command printed its JSON document (render.emit_json)


def document_sent() -> None:
    _SENT.append(True)


def exit_document(code: int, **what) -> None:
    """Under --json, the document of an exit that has no verdict (a wrong command line, an
    interruption): every exit prints one, and only one."""
    if json_asked() and not _SENT:
        print(json.dumps({"verdict": "error", **what, "exit": code}, indent=2), flush=True)


def interrupted() -> None:
    """Ctrl-C or SIGTERM: the one line, the document, exit 130."""
    exit_document(EXIT_INTERRUPTED, interrupted=True)
    say("interrupted")
    sys.exit(EXIT_INTERRUPTED)


@contextmanager
def terminate_on_sigterm():
    """SIGTERM behaves like Ctrl-C: the with-blocks unwind and the tracer detaches."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def stops_held():
    """Ctrl-C and SIGTERM wait until the block is done, then act as they would have (for a
    write that must not be cut between its two steps). A Python handler that only takes note,
    not a blocked signal mask: the kernel may deliver a process's signal to any thread, and
    Python runs the handler in the main thread whichever thread received it."""
    pending = []
    stops = (signal.SIGTERM, signal.SIGINT)
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in stops}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])  # now, to the handler that was there before


def _discard_compile() -> None:
    """A BPF compile started early (probes/program.py) must not be inside LLVM while the
    interpreter exits; looked up, never imported: most commands never start one."""
    program = sys.modules.get("vmemtrace.probes.program")
    if program is not None:
        program.discard_pending()


def one_line_errors(fn):
    """Every expected failure leaves as one line on stderr and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with terminate_on_sigterm():  # every command: SIGTERM unwinds as Ctrl-C does
                return fn(*args, **kwargs)
        except VmemtraceError as e:
            _discard_compile()
            say(str(e))
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            _discard_compile()
            interrupted()
        except RuntimeError as e:
            # A stop while a class is being made (an import): Python 3.11 wraps the handler's
            # KeyboardInterrupt, raised in __set_name__, in a RuntimeError.
            if not isinstance(e.__cause__, KeyboardInterrupt):
                raise
            _discard_compile()
            interrupted()

    return wrapper
