"""KTAP v1 output (--ktap) of real recordings, as kernel CI parses it: a plan per level, one
result line per device and check, SKIP and ERROR directives where the checks say so."""

import re

from tests.conftest import FIXTURES, run_cli
from tests.unit.test_indices import resealed

SEALED = FIXTURES / "events" / "sealed" / "6.12.118+deb12-amd64"
RESULT = re.compile(r"^(    )?(ok|not ok) (\d+) (\S+)( # (SKIP|ERROR)?.*)?$")


def parse(text):
    """(top-level results, subtest results by device), checking every plan against its lines."""
    lines = text.splitlines()
    assert lines[0] == "KTAP version 1" and lines[1].startswith("# vmemtrace on ")
    top, sub, current, plans = [], {}, [], {}
    for line in lines[2:]:
        m = re.match(r"^(    )?1\.\.(\d+)$", line)
        if m:
            plans[bool(m.group(1))] = int(m.group(2))
            continue
        if line.strip() in ("KTAP version 1",) or line.startswith("    # Subtest: "):
            continue
        m = RESULT.match(line)
        assert m, line
        if m.group(1):
            current.append((m.group(2), m.group(4), m.group(6)))
            assert int(m.group(3)) == len(current)
        else:
            if current:
                assert len(current) == plans[True]
                sub[m.group(4)] = current
            current = []
            top.append((m.group(2), m.group(4), m.group(6)))
            assert int(m.group(3)) == len(top)
    assert len(top) == plans[False]
    return top, sub


def test_a_passing_recording_is_all_ok_with_its_skips(tmp_path):
    out = tmp_path / "r.ktap"
    res = run_cli("replay", "--ktap", str(out), str(SEALED / "mem-2M.jsonl"))
    assert res.returncode == 0, res.stderr
    top, sub = parse(out.read_text())
    assert top == [("ok", "dax0.0", None)]
    checks = {name: (result, directive) for result, name, directive in sub["dax0.0"]}
    assert checks["tail-reuse"] == ("ok", None) and checks["cross-check"] == ("ok", None)
    assert checks["no-false-optimisation"] == ("ok", "SKIP")


def test_a_kernel_failure_is_not_ok_and_a_log_that_cannot_be_read_an_error(tmp_path):
    from tests.unit.test_indices import OOO

    def twice(row):
        row[OOO] = 2

    failing = resealed(tmp_path, SEALED / "mem-2M.jsonl", twice)
    out = tmp_path / "f.ktap"
    res = run_cli("replay", "--ktap", str(out), str(failing))
    assert res.returncode == 1, res.stderr
    top, sub = parse(out.read_text())
    assert top == [("not ok", "dax0.0", None)]
    assert ("not ok", "tail-reuse", None) in sub["dax0.0"]
    res = run_cli("replay", "--ktap", str(out), str(tmp_path / "missing.jsonl"))
    assert res.returncode == 2
    top, sub = parse(out.read_text())
    assert top == [("not ok", "trace", "ERROR")] and sub == {}


def test_an_unwritable_ktap_file_is_an_error_not_a_verdict(tmp_path):
    res = run_cli("replay", "--json", "--ktap", str(tmp_path / "no" / "x.ktap"),
                  str(SEALED / "mem-2M.jsonl"))
    assert res.returncode == 2 and "cannot write" in res.stderr
    assert '"verdict": "error"' in res.stdout
