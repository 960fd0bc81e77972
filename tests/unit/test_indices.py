"""A compound page is whole when each of its vmemmap indices arrived once: real sealed recordings
(tests/fixtures/events/sealed), one compound page's row edited the way a kernel that populated an
index twice, or skipped one, would have made the probes count it, then sealed again as `record`
seals."""

import json

import pytest

from tests.conftest import FIXTURES, run_cli
from vmemtrace.log import logfile, rows
from vmemtrace.walk import backing

SEALED = FIXTURES / "events" / "sealed"
OOO = rows.COLUMNS.index("out_of_order")
MAX = rows.COLUMNS.index("max_index")
PTES = rows.COLUMNS.index("ptes")


def resealed(tmp_path, src, edit):
    """src's events, the first probe summary's first layout class row edited by edit(row),
    written and sealed by LogFile."""
    with open(src) as fh:
        evs = logfile.read(fh, str(src))
    done = False
    for ev in evs:
        if ev["type"] == "compounds" and "source" not in ev and ev["classes"] and not done:
            row = ev["classes"][0]
            assert row[1 + OOO] == 0 and row[1 + MAX] == row[1 + PTES]  # as the kernel did it
            page = row[1:]
            edit(page)
            row[1:] = page
            done = True
    assert done
    path = tmp_path / src.name
    log = logfile.LogFile(str(path))
    for ev in evs:
        log.write(ev)
    log.seal()
    return path


def replay(path):
    res = run_cli("replay", "--json", str(path))
    assert "Traceback" not in res.stderr
    return res, json.loads(res.stdout)


def failed_checks(doc):
    return {c["name"]: c["detail"] for d in doc["devices"] for c in d["checks"]
            if c["status"] == "fail"}


LOGS = [SEALED / "6.12.118+deb12-amd64" / "mem-2M.jsonl", SEALED / "7.3.4+deb13-amd64" / "mem-2M.jsonl",
        SEALED / "6.12.118+deb12-amd64" / "mem-1G.jsonl"]


@pytest.mark.parametrize("src", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_recording_proves_every_index_arrived_once(src):
    res, doc = replay(src)
    assert res.returncode == 0 and doc["verdict"] == "pass", res.stderr


@pytest.mark.parametrize("src", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_index_populated_twice_beside_one_skipped_fails_the_kernel(tmp_path, src):
    """Indices 0, 1, 1, 3, ...: as many PTEs as indices, the highest the last, and two arrived
    out of order (the repeated 1, and the 3 after it)."""
    def twice(row):
        row[OOO] = 2

    res, doc = replay(resealed(tmp_path, src, twice))
    assert res.returncode == 1 and doc["verdict"] == "fail", res.stderr
    assert "out of index order (an index populated twice, or one skipped)" in \
        failed_checks(doc)["tail-reuse"]


@pytest.mark.parametrize("src", LOGS[:1], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_skipped_index_fails_the_kernel(tmp_path, src):
    """Indices 0, 2, 3, ...: one PTE short, the highest the last, one out of order."""
    def skipped(row):
        row[PTES] -= 1
        row[OOO] = 1
        row[rows.COLUMNS.index("reused")] -= 1
        row[rows.COLUMNS.index("on_tail")] -= 1

    res, doc = replay(resealed(tmp_path, src, skipped))
    assert res.returncode == 1 and doc["verdict"] == "fail", res.stderr
    assert "vmemmap PTEs, expected" in failed_checks(doc)["tail-reuse"]


@pytest.mark.parametrize("src", LOGS[:1], ids=lambda p: f"{p.parent.name}/{p.name}")
def test_indices_no_kernel_can_have_counted_are_an_edited_log(tmp_path, src):
    """More PTEs than the highest index and the ones out of order allow: the log, not the
    kernel, is wrong (exit 2)."""
    def lowered(row):
        row[MAX] -= 1

    res, doc = replay(resealed(tmp_path, src, lowered))
    assert res.returncode == 2 and doc["verdict"] == "error", res.stderr
    assert any("does not add up" in p for p in doc["problems"]), doc["problems"]


def test_a_schema_4_log_whose_pages_lack_the_index_column_is_refused(tmp_path):
    src = LOGS[0]
    lines = src.read_text().splitlines(keepends=True)[:-1]
    for n, line in enumerate(lines):
        ev = json.loads(line)
        if ev["type"] == "compounds":
            ev["classes"] = [row[:-1] for row in ev["classes"]]
            ev["kept"] = [row[:-1] for row in ev["kept"]]
            lines[n] = json.dumps(ev) + "\n"
    (tmp_path / "x.jsonl").write_text("".join(lines))
    res = run_cli("replay", "--trust-unsealed", str(tmp_path / "x.jsonl"))
    assert res.returncode == 2 and "without out_of_order" in res.stderr, res.stderr


def test_the_walk_counts_a_hole_as_the_probes_would():
    """backing's page of a compound page whose third vmemmap PTE is not mapped: the fourth
    arrived out of order, and the highest mapped index is the last."""
    pages = [((100, "pte"), True), ((101, "pte"), True), (None, False)] + \
        [((101, "pte"), False)] * 5
    c = backing._compound(512, 512, 512, pages)
    assert (c["ptes"], c["max_index"], c["out_of_order"]) == (7, 8, 1)
    whole = backing._compound(512, 512, 512, [((100, "pte"), True), ((101, "pte"), True)]
                              + [((101, "pte"), False)] * 6)
    assert (whole["ptes"], whole["max_index"], whole["out_of_order"]) == (8, 8, 0)
