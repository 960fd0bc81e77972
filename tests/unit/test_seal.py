"""Sealed event logs: real recordings written again by the writer `record` uses (LogFile), then
cut, thinned and edited: only the whole log passes, and a log without its seal passes at most as
incomplete."""

import io
import json

import pytest

from tests.conftest import FIXTURES, run_cli
from tests.unit.test_replay import log_path
from vmemtrace.errors import VmemtraceError
from vmemtrace.judge.ledger import fold
from vmemtrace.judge.verdict import evaluate, unsealed
from vmemtrace.log import events, logfile

# Small real logs of each kind: a trace with its walk (cross-check), and an audit.
LOGS = [("6.12", "mem-1G.jsonl"), ("7.3", "mem-1G.jsonl"), ("6.12", "mem-1G.audit.jsonl"),
        ("5.10", "mem-2M.jsonl")]


SEALED = sorted((FIXTURES / "events" / "sealed").glob("*/*.jsonl"))


@pytest.mark.parametrize("path", SEALED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_real_sealed_log_passes_and_every_cut_deletion_or_edit_does_not(path):
    """Logs as record and audit --record write them (the current schema, sealed), from lab
    guests."""
    lines = path.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "seal"
    assert json.loads(lines[0])["schema"] == events.SCHEMA
    assert verdict(lines) == "pass"
    for n in range(len(lines)):
        assert verdict(lines[:n]) != "pass", f"cut after {n} lines passed"
        assert verdict(lines[:n] + lines[n + 1:]) != "pass", f"line {n + 1} deleted passed"
        assert verdict(lines[:n] + [_bump(lines[n])] + lines[n + 1:]) != "pass", \
            f"line {n + 1} edited passed"


def test_a_summary_edited_to_null_is_refused_in_one_line(tmp_path):
    src = next(p for p in SEALED if p.name == "mem-2M.jsonl")
    lines = src.read_text().splitlines(keepends=True)[:-1]  # unsealed: judged as it says
    for n, line in enumerate(lines):
        ev = json.loads(line)
        if ev["type"] == "compounds":
            ev["highest_head"] = None
            lines[n] = json.dumps(ev) + "\n"
    (tmp_path / "x.jsonl").write_text("".join(lines))
    res = run_cli("replay", "--trust-unsealed", str(tmp_path / "x.jsonl"))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1


def sealed_copy(tmp_path, series, name):
    """The recording's events through LogFile, as `record` writes them: the path and its lines."""
    src = log_path(series, "mem-1G").parent / name
    with open(src) as fh:
        evs = logfile.read(fh, str(src))
    path = tmp_path / f"sealed-{series}-{name}"
    log = logfile.LogFile(str(path))
    for ev in evs:
        log.write(ev)
    log.seal()
    return path, path.read_text().splitlines(keepends=True)


def _bump(line: str) -> str:
    """The same event with its first number one higher (at any depth; a string longer where
    it has none): still well formed, no longer as written."""
    def bump(v):
        if type(v) is int:
            return v + 1, True
        items = sorted(v.items()) if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, x in items:
            new, done = bump(x)
            if done:
                v[k] = new
                return v, True
        return v, False

    ev = json.loads(line)
    ev, done = bump({k: v for k, v in ev.items() if k != "type"})
    if not done:
        key = next(k for k, v in sorted(ev.items()) if isinstance(v, str))
        ev[key] += "x"
    ev["type"] = json.loads(line)["type"]
    return json.dumps(ev, sort_keys=True) + "\n"


def verdict(lines, trust_index: bool = False) -> str:
    """What replay makes of these lines, in process: the verdict, or "error" for a log it
    refuses. trust_index: a sealed log of a schema before compound pages recorded their
    indices is judged as whole (what the seal proves, alone)."""
    sealed = logfile.Sealed()
    try:
        led = fold(logfile.stream(io.StringIO("".join(lines)), "log", sealed))
    except (VmemtraceError, StopIteration):
        return "error"
    waived = ("init-skip",) if led.header.get("walk") == "audit" else ()
    doc = evaluate(led, "auto", waived)
    whole = sealed.why is None or (trust_index and sealed.sealed)
    return (doc if whole else unsealed(doc, sealed.why))["verdict"]


@pytest.mark.parametrize("series,name", LOGS)
def test_the_whole_sealed_log_passes_and_every_cut_or_deletion_does_not(tmp_path, series, name):
    _, lines = sealed_copy(tmp_path, series, name)
    assert json.loads(lines[-1])["type"] == "seal"
    assert verdict(lines, trust_index=True) == "pass"
    for n in range(len(lines)):
        assert verdict(lines[:n], trust_index=True) != "pass", f"cut after {n} lines passed"
    for n in range(len(lines)):
        assert verdict(lines[:n] + lines[n + 1:], trust_index=True) != "pass", \
            f"line {n + 1} deleted passed"


def test_a_sealed_log_replays_without_trust():
    path = next(p for p in SEALED if p.name == "mem-1G.jsonl")
    res = run_cli("replay", str(path), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["verdict"] == "pass"


def test_a_sealed_log_from_before_indices_were_recorded_is_incomplete_unless_trusted(tmp_path):
    path, _ = sealed_copy(tmp_path, "6.12", "mem-1G.jsonl")  # a schema-3 recording, sealed
    res = run_cli("replay", str(path), "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 2 and doc["verdict"] == "incomplete", res.stderr
    assert "before compound pages recorded their vmemmap indices" in doc["unjudged_log"]
    assert run_cli("replay", "--trust-unsealed", str(path)).returncode == 0


def test_an_unsealed_log_is_incomplete_unless_trusted():
    path = log_path("6.12", "mem-1G")
    res = run_cli("replay", str(path), "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 2 and doc["verdict"] == "incomplete" and doc["sealed"] is False
    assert "no seal" in res.stderr and res.stderr.count("\n") == 1
    assert run_cli("replay", "--trust-unsealed", str(path)).returncode == 0




@pytest.mark.parametrize("edit,message", [
    (lambda ls: ls[:2] + [_bump(ls[2])] + ls[3:], "sha256"),
    (lambda ls: ls + [ls[1]], "a line after the seal"),
    (lambda ls: ls[:-1] + [ls[-1].replace('"lines": ', '"lines": 1')], "lines"),
    (lambda ls: ls[:3] + ls[2:], "lines"),
])
def test_a_seal_that_disagrees_is_an_error_naming_it(tmp_path, edit, message):
    path, lines = sealed_copy(tmp_path, "6.12", "mem-1G.jsonl")
    edited = edit(lines)
    assert edited != lines
    path.write_text("".join(edited))
    res = run_cli("replay", str(path))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_an_aborted_log_leaves_no_file(tmp_path):
    path = tmp_path / "x.jsonl"
    log = logfile.LogFile(str(path))
    log.write({"type": "header"})
    assert not path.exists()  # written under a temporary name until sealed
    log.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("when", ["creating", "created"])
def test_a_stop_while_the_log_is_created_leaves_no_file(tmp_path, monkeypatch, when):
    """SIGTERM delivered inside the log's creation (before or just after its file is open)
    ends the command and leaves no temporary file."""
    import os
    import signal

    from vmemtrace import errors

    opened = os.fdopen

    def fdopen(fd, mode):
        if when == "creating":
            os.kill(os.getpid(), signal.SIGTERM)
        fh = opened(fd, mode)
        if when == "created":
            os.kill(os.getpid(), signal.SIGTERM)
        return fh

    monkeypatch.setattr(logfile.os, "fdopen", fdopen)
    with errors.terminate_on_sigterm(), pytest.raises(KeyboardInterrupt):
        with logfile.recording(tmp_path / "x.jsonl"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_record_that_cannot_trace_leaves_no_file(tmp_path):
    """This host cannot trace (no root or no kprobes): record fails, and nothing is left."""
    path = tmp_path / "x.jsonl"
    res = run_cli("record", "-o", str(path), "--", "true")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_fifo_or_standard_input_is_refused_at_once(tmp_path):
    import os

    fifo = tmp_path / "log.jsonl"
    os.mkfifo(fifo)
    res = run_cli("replay", str(fifo), timeout=20)
    assert res.returncode == 2 and "not a regular file" in res.stderr, res.stderr
    res = run_cli("replay", "-", timeout=20)
    assert res.returncode == 2 and "not from standard input" in res.stderr, res.stderr


def test_a_file_name_with_control_characters_is_escaped(tmp_path):
    name = tmp_path / "evil\x1b[2J\nverdict PASS.jsonl"
    res = run_cli("replay", str(name))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "\x1b" not in res.stderr and "\\x1b[2J\\x0averdict PASS" in res.stderr


@pytest.mark.parametrize("key,value", [
    ("version", ["6", 12, 117]), ("version", [float("nan"), 12, 0]), ("version", [True, 12, 0]),
    ("version", [None, 12, 0]), ("version", [1 << 63, 12, 0]), ("version", []),
    ("walk", "bogus"), ("strategy", {"vmemmap_populate_address": "bogus"}),
    ("strategy", {"vmemmap_populate_address": ["kprobe"]}), ("feature", {"present": "yes"}),
])
def test_a_header_no_vmemtrace_wrote_is_refused_in_one_line(tmp_path, key, value):
    path, lines = sealed_copy(tmp_path, "6.12", "mem-1G.jsonl")
    header = json.loads(lines[0])
    header[key] = value if key != "strategy" else {**header["strategy"], **value}
    path.write_text(json.dumps(header) + "\n" + "".join(lines[1:]))
    res = run_cli("replay", str(path))
    assert res.returncode == 2 and "header event" in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


@pytest.mark.parametrize("function", ["vmemmap_populate_address", "__populate_section_memmap",
                                      "memmap_init_zone_device", "allocators"])
def test_hits_fewer_than_the_events_they_produced_are_an_inconsistent_log(tmp_path, function):
    """A probe's hits are read against the events its entry produced, so a log whose hits were
    set to 0 (trusted though unsealed) is refused, not passed."""
    src = next(p for p in SEALED if p.parent.name.startswith("7.3") and p.name == "mem-2M.jsonl")
    lines = src.read_text().splitlines(keepends=True)[:-1]
    for n, line in enumerate(lines):
        ev = json.loads(line)
        if ev["type"] == "hits":
            names = [f for f in ev["hits"] if "alloc" in f] if function == "allocators" else [function]
            assert sum(ev["hits"][f] for f in names) > 0
            ev["hits"].update(dict.fromkeys(names, 0))
            lines[n] = json.dumps(ev) + "\n"
    (tmp_path / "x.jsonl").write_text("".join(lines))
    res = run_cli("replay", "--trust-unsealed", str(tmp_path / "x.jsonl"))
    said = "were hit 0 times" if function == "allocators" else f"{function} was hit 0 times"
    assert res.returncode == 2 and said in res.stderr, res.stderr


def test_an_unwritable_junit_file_is_an_error_document_not_a_pass(tmp_path):
    src = next(p for p in SEALED if p.parent.name.startswith("6.12") and p.name == "mem-1G.jsonl")
    res = run_cli("replay", "--json", "--junit", str(tmp_path / "no" / "x.xml"), str(src))
    doc = json.loads(res.stdout)
    assert res.returncode == 2 and doc["verdict"] == "error", res.stdout
    assert any("cannot write" in p for p in doc["problems"]) and "cannot write" in res.stderr


def test_sigterm_ends_a_command_in_one_line():
    """Every command unwinds on SIGTERM as on Ctrl-C: one_line_errors, which wraps each of them,
    around a body still busy when the signal comes (nothing on this host blocks for long: it
    cannot trace)."""
    src = next(p for p in SEALED if p.name == "mem-2M.jsonl")
    stopped_in_one_line(f"import time, sys; sys.argv = ['vmemtrace', 'replay', {str(src)!r}]; "
                        "from vmemtrace.errors import one_line_errors; "
                        "one_line_errors(lambda: time.sleep(30))()")


def stopped_in_one_line(program: str) -> None:
    """program, a Python one run in its own process, SIGTERMed while busy: one line, exit 130."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", program], stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == "vmemtrace: interrupted\n", (proc.returncode, err)


def test_a_stop_while_a_class_is_made_is_an_interruption_not_a_traceback():
    """SIGTERM during an import: Python 3.11 wraps the handler's KeyboardInterrupt, raised in a
    dataclass field's __set_name__, in a RuntimeError (seen with record stopped at start)."""
    body = ("import time\n"
            "class Slow:\n"
            "    def __set_name__(self, owner, name):\n"
            "        time.sleep(30)\n"
            "def make():\n"
            "    class Made:\n"
            "        field = Slow()\n")
    stopped_in_one_line(body + "from vmemtrace.errors import one_line_errors; "
                               "one_line_errors(make)()")
