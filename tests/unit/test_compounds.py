"""compounds.py's columns against the compound events of real recordings, the fold's streaming
and the bounded replay (issue 13): what goes in comes out the same, and a log whose compound
pages are not in head order is judged corrupt."""

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import SERIES, run_cli
from tests.unit.test_replay import load, log_path, write_log
from vmemtrace import events, geometry
from vmemtrace.compounds import CompoundPages
from vmemtrace.ledger import fold

ROOT = Path(__file__).resolve().parents[2]


def compound_events(evs, source):
    return [e for e in evs if e["type"] == "compound" and e.get("source") == source]


@pytest.mark.parametrize("series", SERIES)
@pytest.mark.parametrize("source", [None, "walk"])
def test_columns_give_back_every_compound_event(series, source):
    evs = load(series, "mem-2M")
    want = compound_events(evs, source)
    pages = CompoundPages(source)
    for ev in want:
        pages.append(ev)
    assert len(pages) == len(want)
    assert list(pages) == want
    if want:
        assert pages[0] == want[0] and pages[-1] == want[-1] and pages[1:3] == want[1:3]
        assert pages.nbytes() <= 8 * len(want) * 10  # ten 8-byte columns, nothing per page else
    with pytest.raises(IndexError):
        pages[len(want)]


def test_a_page_with_its_own_range_start_keeps_it():
    evs = compound_events(load("6.12", "mem-2M"), None)
    odd = dict(evs[5], range_start_pfn=evs[5]["range_start_pfn"] + 512)
    pages = CompoundPages()
    for ev in evs[:5] + [odd] + evs[6:]:
        pages.append(ev)
    assert pages[5] == odd and pages[4] == evs[4] and pages[6] == evs[6]


def test_take_splits_and_in_order_merges_by_head():
    evs = compound_events(load("6.12", "mem-2M"), None)
    pages = CompoundPages()
    for ev in reversed(evs[:100]):  # held out of order, as several drains may leave them
        pages.append(ev)
    cut = evs[50]["head_pfn"]
    low = pages.take(lambda head: head < cut)
    assert len(low) == 50 and len(pages) == 50
    assert list(low.in_order()) == evs[:50]
    assert list(pages.in_order(extra=[evs[150], evs[120]])) == evs[50:100] + [evs[120], evs[150]]


def test_the_fold_is_fed_one_event_at_a_time():
    path = log_path("6.12", "mem-2M")
    streamed = fold(events.iter_file(str(path)))
    listed = fold(load("6.12", "mem-2M"))
    (a,), (b,) = streamed.devices, listed.devices
    assert list(a.compounds) == list(b.compounds) and len(a.compounds) == 1536
    assert list(a.walk_compounds) == list(b.walk_compounds) and len(a.walk_compounds) == 1536


def test_compound_pages_out_of_head_order_are_an_inconsistent_log(tmp_path):
    evs = load("6.12", "mem-2M")
    probed = [i for i, e in enumerate(evs) if e["type"] == "compound" and "source" not in e]
    i, j = probed[3], probed[4]
    evs[i], evs[j] = evs[j], evs[i]
    res = run_cli("replay", str(write_log(tmp_path, evs)), "--json")
    assert res.returncode == 2
    assert "not in head order (probes)" in res.stderr


def test_a_truncated_stream_fails_at_its_end(tmp_path):
    lines = log_path("6.12", "mem-2M").read_text().splitlines(keepends=True)
    cut = [ln for ln in lines if json.loads(ln)["type"] not in ("lost", "hits")]
    path = tmp_path / "cut.jsonl"
    path.write_text("".join(cut))
    res = run_cli("replay", str(path))
    assert res.returncode == 2 and "closing events (lost, hits) are missing" in res.stderr


sys.path.insert(0, str(ROOT / "bench"))
import size  # noqa: E402


@pytest.mark.parametrize("gib", [3, 12, 40])
def test_a_grown_recording_replays_to_the_geometry_of_its_size(tmp_path, gib):
    """bench/size.py's input: a grown recording must be what the kernel would have logged for
    that size, or its cost figures measure something else."""
    path = tmp_path / "grown.jsonl"
    with open(path, "w") as fh:
        events.write(size.grow(size.recording(), gib << 30), fh)
    res = run_cli("replay", str(path), "--json")
    assert res.returncode == 0, res.stderr
    (d,) = json.loads(res.stdout)["devices"]
    shape = geometry.RangeShape(d["start_pfn"], (gib << 30) >> 12, 512)
    assert d["compound_pages"] == geometry.compound_pages(shape) == gib * 512
    assert d["vmemmap_pages"]["observed"] == geometry.vmemmap_pages_expected(shape) == gib * 1024
    assert d["struct_pages_initialized"]["observed"] == geometry.struct_pages_init_expected(shape)
    assert d["page_table_walk"]["distinct"] == gib * 1024

