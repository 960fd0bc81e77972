"""The start-up timeline (probes/startup.py): spans on one clock from the process's start."""

import os
import subprocess
import sys
import time

from vmemtrace.probes import startup


def test_the_process_age_is_read_from_the_kernel():
    """A child that sleeps before it asks is at least that old: the age is the kernel's count
    of the process's life, not the time since our module was imported."""
    code = ("import time; time.sleep(0.3); from vmemtrace.probes.startup import process_age; "
            "print(process_age())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()}, check=True).stdout
    assert 0.3 <= float(out) < 30


def test_spans_overlap_and_come_out_in_the_order_they_started():
    t = startup.Timeline(time.monotonic() - 1.0)  # the process started a second ago
    t.since_start("interpreter and imports")
    with t.span("compile"):
        with t.span("kernel facts"):
            time.sleep(0.01)
    rows = t.rows()
    assert [r["phase"] for r in rows] == ["interpreter and imports", "compile", "kernel facts"]
    first, compile_, facts = rows
    assert first["start"] == 0 and first["end"] >= 1.0
    assert compile_["start"] <= facts["start"] and facts["end"] <= compile_["end"]
    assert facts["seconds"] >= 0.01
    assert all(abs(r["seconds"] - (r["end"] - r["start"])) <= 0.002 for r in rows)


def test_a_span_is_kept_when_its_work_fails():
    t = startup.Timeline(time.monotonic())
    try:
        with t.span("compile"):
            raise RuntimeError("clang")
    except RuntimeError:
        pass
    assert [r["phase"] for r in t.rows()] == ["compile"]


def test_timing_refuses_another_root(tmp_path):
    from tests.conftest import run_cli

    res = run_cli("check", "--timing", "--root", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "vmemtrace: --timing starts tracing on the running kernel: not with --root")


def test_a_long_running_process_keeps_a_bounded_timeline():
    t = startup.Timeline(time.monotonic())
    for _ in range(startup.MAX_SPANS + 10):
        with t.span("attach"):
            pass
    assert len(t.rows()) == startup.MAX_SPANS
