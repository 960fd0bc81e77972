#!/usr/bin/env python3
"""Event-log validation, ours against a well-kept library, side by side in one run: the typed
table of vmemtrace/log/events.py (validate()) and jsonschema (Debian's python3-jsonschema, PyPI
jsonschema) with a schema made from the same table, over the same events of a real recording,
repeated. Run on demand, never by the suite:

    .venv/bin/python bench/validate.py [--events 200000]

msgspec, the other candidate, is not packaged for Debian 12, whose Python the lab guests use.
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmemtrace.log import events  # noqa: E402

LOG = next((ROOT / "tests/fixtures/events").glob("6.12*")) / "mem-2M.jsonl"


def _property(kind: str) -> dict:
    count = {"type": "integer", "minimum": 0, "exclusiveMaximum": events.MAX_COUNT}
    return {events.BOOL: {"type": "boolean"}, events.STR: {"type": "string"},
            events.LIST: {"type": "array"}, events.DICT: {"type": "object"},
            events.NUMBER: {"type": "number", "minimum": 0, "exclusiveMaximum": events.MAX_COUNT},
            events.SIGNED: {"type": "integer", "exclusiveMinimum": -events.MAX_COUNT,
                            "exclusiveMaximum": events.MAX_COUNT},
            events.INT_MAP: {"type": "object", "additionalProperties": count},
            events.MAYBE_INT: {"anyOf": [{"type": "null"}, count]},
            events.INT_LIST: {"type": "array", "maxItems": 2, "items": count},
            events.CLASS_ROWS: _rows(count, len(events.COLUMNS) + 1),
            events.PAGE_ROWS: _rows(count, len(events.COLUMNS)),
            events.PARTS: _rows({"type": "integer", "minimum": 0}, 3),
            events.MAYBE_PAIR: {"anyOf": [{"type": "null"}, _rows(count, 2)["items"]]},
            events.STR_LIST: {"type": "array", "items": {"type": "string"}},
            events.SOURCE: {"const": "walk"},
            events.RUNS: _rows(count, 2),
            events.TASKS: {"type": "array", "items": {"type": "array", "minItems": 2, "maxItems": 2}},
            }.get(kind, count)


def _rows(item: dict, width: int) -> dict:
    return {"type": "array", "items": {"type": "array", "items": item, "minItems": width,
                                       "maxItems": width}}


def schema() -> dict:
    """The JSON Schema of events.REQUIRED/TYPES (the physical limits of events._limits aside:
    they would cost jsonschema more)."""
    branches = []
    for kind, keys in events.REQUIRED.items():
        types = events.TYPES.get(kind, {})
        branches.append({"if": {"properties": {"type": {"const": kind}}},
                         "then": {"required": list(keys),
                                  "properties": {k: _property(types.get(k, "")) for k in keys}}})
    return {"type": "object", "required": ["type"],
            "properties": {"type": {"enum": list(events.REQUIRED)}}, "allOf": branches}


def timed(fn, evs) -> float:
    start = time.perf_counter()
    for ev in evs:
        fn(ev)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200000)
    args = ap.parse_args()
    import jsonschema

    recorded = [json.loads(line) for line in LOG.read_text().splitlines()]
    evs = (recorded * (args.events // len(recorded) + 1))[:args.events]
    validator = jsonschema.Draft202012Validator(schema())
    bad = dict(recorded[2], ptes="12")
    assert not validator.is_valid(bad), "the schema must refuse what events.validate refuses"
    ours = timed(lambda ev: events.validate(ev, "bench"), evs)
    theirs = timed(validator.validate, evs)
    print(f"{len(evs)} events of {LOG.parent.name}/{LOG.name}, repeated")
    print(f"events.validate: {ours / len(evs) * 1e6:.2f} us/event")
    print(f"jsonschema {jsonschema.Draft202012Validator.__name__}: {theirs / len(evs) * 1e6:.2f} us/event")
    print(f"jsonschema / ours: {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
