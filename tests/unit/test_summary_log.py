"""Schema 3 (events.py): a range's section calls logged as one summary (sections.py), its
compound pages as one summary per source (compounds.py). Every real recording, its compound events replaced by the summaries a trace
now writes, replays to the same verdict; a summary edited in any way that no fold of compound
pages can produce is an inconsistent log, never a pass; a malformed one is one line, exit 2."""

import copy
import io
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.unit.test_replay import load, replay, write_log
from vmemtrace.judge.ledger import fold
from vmemtrace.judge.verdict import evaluate
from vmemtrace.log import events, logfile
from vmemtrace.log.compounds import MAX_PARTS, CompoundPages
from vmemtrace.log.difference import TABLE_WIDTH, digest, table_add
from vmemtrace.log.rows import COLUMNS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from size import summarised  # noqa: E402

LOGS = sorted((FIXTURES / "events").glob("*/*.jsonl"))


def through_text(evs) -> list:
    """Written and read back as replay reads a file: every event type-checked."""
    text = io.StringIO()
    logfile.write(evs, text)
    text.seek(0)
    return logfile.read(text, "summarised")


@pytest.mark.parametrize("path", LOGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_recording_summarised_replays_to_the_same_verdict(path):
    evs = logfile.read(open(path), str(path))
    new = through_text(summarised(evs))
    assert new[0]["schema"] == 3  # summaries of pages that did not record their indices
    assert not any(e["type"] in ("compound", "section") for e in new)
    pages = sum(e["type"] == "compound" for e in evs)
    assert sum(e["count"] for e in new if e["type"] == "compounds") == pages
    calls = sum(e["type"] == "section" for e in evs)
    assert sum(e["count"] for e in new if e["type"] == "sections") == calls
    assert sum(e["type"] == "sections" for e in new) == sum(e["type"] == "range" for e in evs) \
        or not calls
    assert evaluate(fold(new)) == evaluate(fold(evs))


def summary_log(series="6.12", case="mem-2M", source=None, kind="compounds"):
    """A summarised recording and the index of one source's summary in it."""
    evs = list(summarised(load(series, case)))
    (i,) = [i for i, e in enumerate(evs) if e["type"] == kind and e.get("source") == source]
    return evs, i


def edits():
    def count(s):
        s["count"] += 1

    def class_pages(s):
        s["classes"][0][0] -= 1

    def part_gone(s):
        s["parts"].pop(3)

    def misaligned(s):
        s["kept"][2][0] += 1

    def twice(s):
        s["kept"][1] = list(s["kept"][2])

    def outside(s):
        s["lowest_head"] = s["kept"][0][0] + 512

    def class_twice(s):
        s["classes"].append(list(s["classes"][0]))
        s["count"] += s["classes"][0][0]
        s["parts"][0][1] += s["classes"][0][0]

    def no_add_up(s):
        s["kept"][0][2] += 1  # fresh: ptes no longer fresh + reused + existing

    def table_cell(s):
        s["cells"][5][0] += 1

    def table_head(s):
        s["cells"][TABLE_WIDTH + 3][1] ^= 512

    def one_short(s):  # counts, classes and parts consistent, the table not
        s["count"] -= 1
        s["classes"][0][0] -= 1
        s["parts"][0][1] -= 1

    return [(count, "does not add up"), (class_pages, "does not add up"),
            (part_gone, "does not add up"), (misaligned, "is not aligned"),
            (twice, "appears twice"), (outside, "lies outside the summary's heads"),
            (class_twice, "there twice"), (no_add_up, "does not add up"),
            (table_cell, "difference table does not hold"),
            (table_head, "difference table does not hold"),
            (one_short, "difference table does not hold")]


@pytest.mark.parametrize("source", [None, "walk"])
@pytest.mark.parametrize("edit,message", edits(), ids=lambda e: getattr(e, "__name__", ""))
def test_an_edited_summary_is_an_inconsistent_log(tmp_path, source, edit, message):
    evs, i = summary_log(source=source)
    edit(evs[i])
    res, doc = replay(write_log(tmp_path, evs))
    assert res.returncode == 2 and doc["verdict"] == "error", res.stderr
    assert "inconsistent log" in res.stderr and message in res.stderr, res.stderr


def test_a_summary_that_adds_up_but_misses_a_page_fails(tmp_path):
    evs, i = summary_log()
    s = evs[i]
    s["count"] -= 1
    s["classes"][0][0] -= 1
    s["parts"][0][1] -= 1
    page = dict(zip(COLUMNS, s["classes"][0][1:]))
    table_add(s["cells"], page["head_pfn"], digest(page), -1)  # consistent, one page short
    res, doc = replay(write_log(tmp_path, evs))
    assert res.returncode == 1 and doc["verdict"] == "fail", res.stderr
    tail = {c["name"]: c for c in doc["devices"][0]["checks"]}["tail-reuse"]
    assert "1535 compound pages, expected 1536" in tail["detail"]


def test_two_summaries_of_one_range_are_an_inconsistent_log(tmp_path):
    evs, i = summary_log()
    evs.insert(i + 1, copy.deepcopy(evs[i]))
    res, _ = replay(write_log(tmp_path, evs))
    assert res.returncode == 2 and "a second summary of the compound pages" in res.stderr


@pytest.mark.parametrize("key,value,message", [
    ("parts", [[0, 1, 1 << 64]], "not a list of [part, pages, digest]"),
    ("classes", [[1, 2, 3]], f"not a list of {len(COLUMNS) + 1} counts each"),
    ("kept", [[-1] * len(COLUMNS)], f"not a list of {len(COLUMNS)} counts each"),
    ("shared_tail", [1], "not a pair of counts or null"),
    ("source", "probes", 'is not "walk"'),
    ("problems", [3], "not a list of strings"),
    ("part_shift", 99, "part_shift 99 is beyond"),
    ("highest_head", 1 << 41, "highest_head"),
    ("cells", [[0, 0, 0, 0]] * 3, "not a list of 48 [pages, head, digest, check]"),
    ("cells", [[0, 0, 0, 1 << 64]] * 48, "not a list of 48 [pages, head, digest, check]"),
])
def test_a_malformed_summary_is_one_line(tmp_path, key, value, message):
    evs, i = summary_log()
    evs[i][key] = value
    res, _ = replay(write_log(tmp_path, evs))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_a_terabyte_summary_is_one_short_line():
    """524288 compound pages of 2 MiB: the summary the log gets is bounded, parts merged."""
    (ev,) = [e for e in load("6.12", "mem-2M") if e["type"] == "compound"][:1]
    pages = CompoundPages()
    for i in range(524288):
        pages.append(dict(ev, head_pfn=ev["range_start_pfn"] + i * 512, tail_pfn=(1 << 21) + 2 * i))
    line = json.dumps(pages.as_event())
    assert len(line) < 64 << 10 < events.MAX_LINE
    back = CompoundPages.from_event(events.validate(json.loads(line), "test"))
    assert back.judged() == 524288 and not back.problems
    assert back.digests() == pages.digests() and len(back.digests()[1]) <= MAX_PARTS
    assert back.difference_table() == pages.difference_table()


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update(fresh=s["fresh"] + 1), "does not add up"),
    (lambda s: s.update(allocs=s["alloc_calls"] + 1), "does not add up"),
    (lambda s: s.update(count=0), "does not add up"),
    (lambda s: s.update(runs=[]), "does not add up"),
    (lambda s: s.update(runs=[[s["runs"][0][0], s["runs"][0][1] + 32768]]), "outside the range"),
    (lambda s: s.update(runs=[[5, 5]]), "an empty run of sections"),
])
def test_an_edited_sections_summary_is_an_inconsistent_log(tmp_path, edit, message):
    evs, i = summary_log(kind="sections")
    edit(evs[i])
    res, doc = replay(write_log(tmp_path, evs))
    assert res.returncode == 2 and "inconsistent log" in res.stderr and message in res.stderr, \
        res.stderr


def test_a_sections_summary_that_adds_up_but_saw_less_is_judged(tmp_path):
    """Fewer PTEs than the range needs, consistently: the probes are blind, not a pass."""
    evs, i = summary_log(kind="sections")
    s = evs[i]
    s.update(ptes=s["ptes"] // 2, reused=s["reused"] - s["ptes"] // 2)  # still adds up
    assert s["reused"] >= 0
    res, doc = replay(write_log(tmp_path, evs))
    assert doc["verdict"] != "pass", res.stderr


@pytest.mark.parametrize("key,value,message", [
    ("runs", [[1]], "not a list of [first pfn, end pfn]"),
    ("runs", [[0, 1 << 41]], "not a list of [first pfn, end pfn]"),
    ("tasks", [[1]], "not a list of [pid, comm]"),
    ("has_pgmap", 1, "not a boolean"),
])
def test_a_malformed_sections_summary_is_one_line(tmp_path, key, value, message):
    evs, i = summary_log(kind="sections")
    evs[i][key] = value
    res, _ = replay(write_log(tmp_path, evs))
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_a_sections_summary_says_when_its_calls_returned():
    """A range's section calls, summed, keep the first and last return time (CLOCK_MONOTONIC ns),
    before the range's own return; times not [first, last] are an edited log."""
    path = FIXTURES / "events" / "sealed" / "6.12.118+deb12-amd64" / "mem-2M.jsonl"
    evs = logfile.read(open(path), str(path))
    (sec,) = [e for e in evs if e["type"] == "sections"]
    (rng,) = [e for e in evs if e["type"] == "range"]
    first, last = sec["ktime"]
    assert 0 < first < last < rng["ktime_ns"]
    sec["ktime"] = [last, first]
    led = fold(through_text(evs))
    assert any("not [first, last]" in p for d in led.devices for p in d.inconsistencies())
