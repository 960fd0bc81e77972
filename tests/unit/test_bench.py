"""bench/bench.py's tables from a real run (tests/fixtures/bench/: the raw measurements of the
README's bench run, 6.12 and 6.1 guests). The extrapolation to 1 TiB must give what the kernel's
geometry gives for a 1 TiB range, and every ratio must be the measured medians' quotient."""

import json
import statistics
import sys
from pathlib import Path

from vmemtrace import geometry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import bench  # noqa: E402

RUN = json.loads((ROOT / "tests/fixtures/bench/2026-11-27.json").read_text())
TIB_PAGES = (1 << 40) // geometry.PAGE_SIZE
PER_COMPOUND = {"mem-2M": 512, "mem-1G": 262144, "dev-2M": 1, "mem-4K": 1}  # dev-2M: altmap


def test_savings_at_1_tib_are_the_geometry_of_a_1_tib_range():
    rows = [r for doc in RUN for r in bench.savings_rows(doc)]
    assert len(rows) == 8
    for kernel, case, _size, _naive, _obs, naive_tib, obs_tib, _t, _t_tib in rows:
        shape = geometry.RangeShape(0, TIB_PAGES, PER_COMPOUND[case])
        naive = geometry.vmemmap_pages_naive(shape) * geometry.PAGE_SIZE / (1 << 30)
        expected = geometry.vmemmap_pages_expected(shape) * geometry.PAGE_SIZE / (1 << 30)
        assert naive_tib == f"{naive:.2f} GiB", (kernel, case)
        assert obs_tib == f"{expected:.4f} GiB", (kernel, case)


def test_ratios_are_quotients_of_the_medians_and_goals_are_judged():
    rows = {(r[0], r[1]): r for doc in RUN for r in bench.rows_for(doc)}
    for doc in RUN:
        for case, o in doc["overhead"].items():
            row = rows[(doc["kernel"], f"ndctl create {case}: traced / untraced (median of 5)")]
            ratio = statistics.median(o["traced"]) / statistics.median(o["untraced"])
            assert row[4] == f"{ratio:.3f}"
            goal = bench.GOALS.get(case)
            assert row[6] == ("" if goal is None else ("yes" if ratio <= goal else "NO"))
        loss = rows[(doc["kernel"], f"lost events, {doc['loss']['namespaces']} namespaces back to "
                                    f"back ({doc['loss']['events']} events)")]
        assert loss[6] == ("yes" if doc["loss"]["lost"] == 0 else "NO")
