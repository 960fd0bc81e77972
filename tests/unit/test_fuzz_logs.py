"""Fuzzing replay with real recordings (hypothesis, bounded): a log with a judged number, a head
pfn or its closing events changed is never "pass"; whatever the change, the answer is a verdict
(exit 0, 1 or 2) or one line (exit 2), never a traceback."""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import FIXTURES
from vmemtrace.errors import VmemtraceError
from vmemtrace.judge.ledger import fold
from vmemtrace.judge.verdict import EXIT, evaluate
from vmemtrace.log import logfile

# The numbers the verdict is made of, per event type.
JUDGED = {
    "section": ("ptes", "plain", "fresh", "reused", "existing", "direct_bytes"),
    "range": ("nr_pages", "start_pfn", "mic_calls", "mic_pages", "izdp_calls", "pfns_per_compound"),
    # (tail_pfn is which physical page: judged where the probes and the walk both saw it, by
    # cross-check, and by no two compound pages sharing one: test_replay.py)
    "compound": ("head_pfn", "ptes", "fresh", "reused", "on_tail", "head_fresh", "tail_fresh"),
    "walk": ("distinct", "reused", "mapped", "nr_pages", "start_pfn"),
}
CLOSING = ("lost", "hits", "command")
LOGS = sorted(p for p in (FIXTURES / "events").glob("*/*.jsonl") if not p.name.endswith(".audit.jsonl"))
LOADED = {p: logfile.read(open(p), str(p)) for p in LOGS}


def outcome(evs):
    """What `vmemtrace replay` would answer: (exit code, verdict or None)."""
    import io

    text = io.StringIO()
    logfile.write(evs, text)
    text.seek(0)
    try:
        doc = evaluate(fold(logfile.read(text, "fuzzed")))
    except VmemtraceError:
        return 2, None
    return EXIT[doc["verdict"]], doc["verdict"]


def judged_positions(evs):
    return [(i, key) for i, e in enumerate(evs) for key in JUDGED.get(e["type"], ()) if key in e]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_changed_judged_number_never_passes(data):
    path = data.draw(st.sampled_from(LOGS))
    evs = copy.deepcopy(LOADED[path])
    assert outcome(evs) == (0, "pass"), path  # the recording itself passes
    i, key = data.draw(st.sampled_from(judged_positions(evs)))
    old = evs[i][key]
    new = data.draw(st.one_of(st.integers(0, 1 << 45), st.integers(-3, 3).map(lambda d: old + d))
                    .filter(lambda v: v != old and v >= 0))
    evs[i][key] = new
    code, verdict = outcome(evs)
    assert code in (0, 1, 2)
    assert verdict != "pass", (path.name, evs[i]["type"], key, old, new)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_log_without_its_closing_events_never_passes(data):
    path = data.draw(st.sampled_from(LOGS))
    evs = LOADED[path]
    cut = data.draw(st.integers(1, len(evs) - 1))
    kept = [e for e in evs[:cut]]
    if any(e["type"] in CLOSING for e in kept):
        kept = [e for e in kept if e["type"] not in CLOSING]
    code, verdict = outcome(kept)
    assert verdict != "pass" and code in (1, 2)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), value=st.one_of(st.none(), st.text(max_size=5), st.floats(),
                                       st.lists(st.integers(), max_size=2), st.booleans(),
                                       st.integers(-(1 << 70), 1 << 70)))
def test_any_value_anywhere_is_a_verdict_or_one_line(data, value):
    path = data.draw(st.sampled_from(LOGS))
    evs = copy.deepcopy(LOADED[path])
    i = data.draw(st.integers(0, len(evs) - 1))
    key = data.draw(st.sampled_from(sorted(evs[i])))
    evs[i][key] = value
    try:
        code, _ = outcome(evs)
    except (TypeError, ValueError, KeyError) as e:  # json.dumps of NaN is fine; others are bugs
        pytest.fail(f"{path.name} {evs[i]['type']}.{key} = {value!r}: {type(e).__name__}: {e}")
    assert code in (0, 1, 2)
