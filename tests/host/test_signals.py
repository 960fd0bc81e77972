"""200 SIGINTs and SIGTERMs per command, each at a random moment of its run, start-up included:
one line and exit 130 (with a JSON document under --json), or the command's own end where it
came after it; never a traceback from vmemtrace's code, never a file left half-written. Run as
root on the host (`./scripts/test.sh`), like the rest of tests/host: what each command does
here depends on what this host lets it do, and every outcome is judged the same way."""

import json
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

SEALED = FIXTURES / "events" / "sealed" / "6.12.118+deb12-amd64" / "mem-1G.jsonl"
TRIES = 200
AT_ONCE = 8
COMMANDS = {
    "check": ["check", "--json"],
    "replay": ["replay", "--json", str(SEALED)],
    "verify": ["verify", "--json", "--", "sleep", "0.3"],
    "record": ["record", "-o", "{out}/log.jsonl", "--", "sleep", "0.3"],
    "audit": ["audit", "--json"],
}


def startup_only(err: str) -> bool:
    """A traceback from CPython's own start-up (its standard streams, site and the .pth files of
    the interpreter's site-packages, runpy finding the module), before any vmemtrace code ran."""
    if err.startswith(("Fatal Python error: init_", "Could not import runpy module")):
        return True
    frames = [line.strip() for line in err.splitlines() if line.strip().startswith('File "')]
    return bool(frames) and not any("/vmemtrace/" in f for f in frames)


def run(argv, out: Path, delay: float, signum: int):
    argv = [a.format(out=out) for a in argv]
    proc = subprocess.Popen([sys.executable, "-m", "vmemtrace", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=out)
    time.sleep(delay)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


@pytest.mark.parametrize("name", COMMANDS)
def test_a_signal_at_any_moment_ends_cleanly(tmp_path, name):
    argv = COMMANDS[name]
    calm = tmp_path / "calm"
    calm.mkdir()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "vmemtrace",
                           *[a.format(out=calm) for a in argv]],
                          capture_output=True, text=True, cwd=calm, timeout=120)
    took, own = time.monotonic() - started, proc.returncode
    rnd = random.Random(name)
    tries = [(tmp_path / f"t{i}", rnd.uniform(0, took * 1.2),
              rnd.choice((signal.SIGINT, signal.SIGTERM))) for i in range(TRIES)]
    for out, _, _ in tries:
        out.mkdir()
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(lambda t: run(argv, *t), tries))
    for (out, delay, signum), (code, stdout, stderr) in zip(tries, results):
        where = f"{name}, {signum.name} at {delay:.3f}s: exit {code}, {stderr[-600:]!r}"
        left = sorted(p.name for p in out.iterdir())
        if startup_only(stderr) or (code == -signum and stderr == ""):
            assert left == [], where  # before vmemtrace's code ran: nothing to leave
            continue
        assert "Traceback" not in stderr, where
        if code in (130, -signal.SIGINT):  # -SIGINT: CPython re-raising it as it exits
            assert stderr.strip().splitlines()[-1] == "vmemtrace: interrupted", where
            if "--json" in argv and code == 130:
                # one document (json.loads refuses two): the interruption's, or the command's
                # own where it was out first
                assert isinstance(json.loads(stdout), dict), where
        else:
            assert code == own, where  # it ended on its own before the signal counted
        # record: its log whole and sealed, or none, never a temporary file
        assert left in ([], ["log.jsonl"]), (where, left)
        if left:
            lines = (out / "log.jsonl").read_text().splitlines()
            assert json.loads(lines[-1])["type"] == "seal", where
