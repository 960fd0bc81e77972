"""Long host-side steps: progress lines on stderr, and subprocesses whose failure is one line."""

import subprocess
import sys
import time
from contextlib import contextmanager

from vmemtrace.errors import VmemtraceError


def say(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


@contextmanager
def step(what: str):
    """Announce a long step and how long it took, so a user never stares at a silent terminal."""
    say(f"{what} ...")
    start = time.monotonic()
    yield
    say(f"{what}: done in {time.monotonic() - start:.0f}s")


def run(cmd: list[str], failure: str, input_text: str | None = None) -> str:
    """Run cmd, return its stdout; on failure raise `failure` with the command's last line."""
    try:
        proc = subprocess.run(cmd, input=input_text, capture_output=True, text=True)
    except FileNotFoundError:
        raise VmemtraceError(f"{failure}: {cmd[0]} not found") from None
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise VmemtraceError(f"{failure}: {last}")
    return proc.stdout
