#!/usr/bin/env python3
"""Replay cost against device size, side by side in one run: the real 6.12 mem-2M cross-check
recording (tests/fixtures/events: 3 GiB, probes and page-table walk) grown to larger ranges, then
replayed by `vmemtrace replay --json` (the streaming fold, compounds.py) and, beside it, by a
plain reader that keeps every event as a parsed JSON object (what replay did before: 1.9 GB at
1 TiB). Prints per size the log's bytes, wall time and peak RSS of each, and the ratios to the
smallest size.

    .venv/bin/python bench/size.py [SIZE ...]      # default 3G 64G 256G 1T

Each grown log is replayed twice: as schema 2 (one event per section call and per compound page)
and as schema 3 (summarised(): what a trace now writes, summaries per range).

Grown logs are benchmark input, not evidence about a kernel: the recording's sections, compound
pages (probes and walk) and counts are repeated section by section with their pfns shifted, and
each copy's first-tail pages moved to pfns of their own (2^28 pages apart), so that the grown
log is what the same kernel would have logged for a larger range; `grow()` is tested to replay
to a pass with the geometry's numbers for that size (tests/unit/test_bench.py).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vmemtrace.log.compounds import CompoundPages  # noqa: E402
from vmemtrace.log.sections import summed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LOG = next((ROOT / "tests/fixtures/events").glob("6.12*")) / "mem-2M.jsonl"
SECTION_PAGES = 32768  # 128 MiB of 4 KiB pages: the recording is made of whole sections
TAIL_SHIFT = 1 << 28  # pfns between copies of the recording's vmemmap pages
GiB = 1 << 30


def _parse_size(text: str) -> int:
    units = {"G": GiB, "T": GiB << 10}
    return int(text[:-1]) * units[text[-1].upper()]


def grow(events: list[dict], size: int) -> Iterator[dict]:
    """The recording's events for a range of `size` bytes (a multiple of 128 MiB)."""
    rng = next(e for e in events if e["type"] == "range")
    start, base_pages = rng["start_pfn"], rng["nr_pages"]
    base_sections = base_pages // SECTION_PAGES
    sections = size // 4096 // SECTION_PAGES
    scale = sections / base_sections

    def copies(run: list[dict], key: str):
        """A run of events (a range's sections, or one source's compound pages), repeated for
        every copy of the recording in the grown range, in pfn order as the tool logs them."""
        for block in range(sections // base_sections + 1):
            for ev in run:
                if (ev[key] - start) // SECTION_PAGES + block * base_sections < sections:
                    out = dict(ev, **{key: ev[key] + block * base_pages})
                    if out.get("tail_pfn"):
                        out["tail_pfn"] += block * TAIL_SHIFT
                    yield out

    def scaled(ev: dict, keys) -> dict:
        return dict(ev, **{k: round(ev[k] * scale) for k in keys})

    nr = sections * SECTION_PAGES
    for i, ev in enumerate(events):
        kind = ev["type"]
        run_key = {"section": "pfn", "compound": "head_pfn"}.get(kind)
        if run_key is not None:
            # The first of a run of events of its kind and source stands for the whole run.
            if i and (events[i - 1]["type"], events[i - 1].get("source")) == (kind, ev.get("source")):
                continue
            end = i
            while end < len(events) and (events[end]["type"], events[end].get("source")) == (kind, ev.get("source")):
                end += 1
            yield from copies(events[i:end], run_key)
        elif kind == "range":
            yield dict(scaled(ev, ("mic_calls", "mic_pages", "izdp_calls", "duration_ns")),
                       nr_pages=nr)
        elif kind == "walk":
            w = scaled(ev, ("vmemmap_pages", "mapped", "distinct", "reused"))
            w["levels"] = {k: round(v * scale) for k, v in ev["levels"].items()}
            yield dict(w, nr_pages=nr)
        elif kind == "device":
            yield dict(ev, nr_pages=ev["nr_pages"] - base_pages + nr, pgmap_nr_pages=nr)
        elif kind == "vmstat" and ev["when"] == "after":
            before = next(e for e in events if e["type"] == "vmstat" and e["when"] == "before")
            delta = ev["nr_memmap_pages"] - before["nr_memmap_pages"]
            yield dict(ev, nr_memmap_pages=before["nr_memmap_pages"] + round(delta * scale))
        elif kind == "hits":
            yield dict(ev, hits={k: round(v * scale) if k != "memmap_init_zone_device" else v
                                 for k, v in ev["hits"].items()})
        elif kind == "kmsg":
            yield scaled(ev, ("pages",))
        else:
            yield ev


def summarised(events: Iterable[dict]) -> Iterator[dict]:
    """A schema-2 log as schema 3 logs it (events.py), what a live trace of the same range now
    writes: a range's section events summed into one "sections" event just before its range
    event (probes/tracer.py), each run of one source's compound events replaced by its
    summary (compounds.py) where the run ends."""
    run: CompoundPages | None = None
    held: dict[object, list[dict]] = {}  # sections by range start (has_pgmap), else "loose"

    def sections_of(rng: dict | None) -> Iterator[dict]:
        for key in list(held):
            inside = [rng is None or rng["start_pfn"] <= s["pfn"] < rng["start_pfn"] + rng["nr_pages"]
                      for s in held[key]]
            mine = [s for s, i in zip(held[key], inside) if i]
            held[key] = [s for s, i in zip(held[key], inside) if not i]
            if mine:
                yield summed(mine).as_event()

    for ev in events:
        if ev["type"] == "compound":
            if run is not None and (run.source != ev.get("source")
                                    or run.shared[0] != ev["range_start_pfn"]):
                yield run.as_event()
                run = None
            run = run or CompoundPages(ev.get("source"))
            run.append(ev)
            continue
        if run is not None:
            yield run.as_event()
            run = None
        if ev["type"] == "section":
            held.setdefault(ev["range_start_pfn"] if ev["has_pgmap"] else "loose", []).append(ev)
            continue
        if ev["type"] == "range":
            yield from sections_of(ev)
        if ev["type"] == "lost":  # the closing events: what never reached its range
            yield from sections_of(None)
        yield dict(ev, schema=3) if ev["type"] == "header" else ev
    if run is not None:
        yield run.as_event()
    yield from sections_of(None)


def recording() -> list[dict]:
    with open(LOG) as fh:
        return [json.loads(line) for line in fh]


PLAIN = """import json, sys
events = [json.loads(line) for line in open(sys.argv[1])]
print(len(events))
"""


def measure(argv: list[str]) -> dict:
    """Wall time and peak RSS of one child process (os.wait4: its own rusage)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    return {"seconds": wall, "rss_mb": usage.ru_maxrss / 1024, "status": os.waitstatus_to_exitcode(status),
            "out": out, "err": err}


def main(sizes: list[str]) -> int:
    base = recording()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for text in sizes:
            size = _parse_size(text)
            row = [text]
            for schema, make in ((2, grow), (3, lambda evs, n: summarised(grow(evs, n)))):
                path = Path(tmp) / f"mem-2M-{text}-{schema}.jsonl"
                with open(path, "w") as fh:
                    for ev in make(base, size):
                        fh.write(json.dumps(ev, sort_keys=True) + "\n")
                ours = measure([sys.executable, "-m", "vmemtrace", "replay", "--trust-unsealed", "--json", str(path)])
                verdict = json.loads(ours["out"])["verdict"] if ours["out"] else ours["err"][-200:]
                row += [path.stat().st_size, ours, verdict]
                if schema == 2:
                    row.append(measure([sys.executable, "-c", PLAIN, str(path)]))
                path.unlink()
            rows.append(row)
    first = rows[0]
    print("schema 2: one event per compound page; schema 3: one summary of sections per range, one of\ncompound pages per range and source;\n"
          "dicts: a plain reader of the schema-2 log keeping every event as a JSON object\n")
    print(f"{'size':>5} {'log MB':>8} {'replay s':>9} {'RSS MB':>8} {'x RSS':>6} "
          f"{'dicts MB':>9} {'x RSS':>6} | {'log MB':>8} {'x log':>6} {'replay s':>9} "
          f"{'RSS MB':>8} {'x RSS':>6}  verdicts")
    for text, n2, ours2, v2, plain, n3, ours3, v3 in rows:
        print(f"{text:>5} {n2 / 2**20:8.1f} {ours2['seconds']:9.2f} {ours2['rss_mb']:8.1f} "
              f"{ours2['rss_mb'] / first[2]['rss_mb']:6.2f} {plain['rss_mb']:9.1f} "
              f"{plain['rss_mb'] / first[4]['rss_mb']:6.2f} | {n3 / 2**20:8.2f} {n3 / first[5]:6.2f} "
              f"{ours3['seconds']:9.2f} {ours3['rss_mb']:8.1f} {ours3['rss_mb'] / first[6]['rss_mb']:6.2f}"
              f"  {v2}, {v3}")
    return 0 if all(r[3] == "pass" and r[7] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["3G", "64G", "256G", "1T"]))
