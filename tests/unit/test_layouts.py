"""The vmemmap layout: read from the kernel's markers (recorded roots through `check --root`),
its numbers in geometry, and replays of real recordings judged by the layout their header names:
a layout vmemtrace does not know, or knows only from the kernel source, never fails a device."""

import json
import shutil

import pytest

from tests.conftest import kernel_root, run_cli
from tests.unit.test_replay import checks, doctor, load, log_path, replay
from vmemtrace.judge import geometry, layouts

GIB_PFNS = (1 << 30) >> 12


def _check_root(tmp_path, series, extra_symbol=None, extra_config=None):
    """`check --root --json` on a copy of a recorded kernel's tree, with a symbol added to its
    kallsyms and a line to its config."""
    root = tmp_path / "k"
    shutil.copytree(kernel_root(series), root)
    if extra_symbol:
        with open(root / "proc/kallsyms", "a") as fh:
            fh.write(f"ffffffff94d5a000 T {extra_symbol}\n")
    if extra_config:
        (config,) = (root / "lib/modules").glob("*/config")
        with open(config, "a") as fh:
            fh.write(extra_config + "\n")
    res = run_cli("check", "--root", str(root), "--json")
    assert "Traceback" not in res.stderr, res.stderr
    return json.loads(res.stdout)["feature"]


@pytest.mark.parametrize("series", ["6.1", "6.12", "7.3"])
def test_debian_kernels_have_the_two_page_layout(tmp_path, series):
    feature = _check_root(tmp_path, series)
    assert feature["present"] is True
    assert feature["layout"] == "head+first-tail"
    assert "no marker of a later layout" in feature["layout_evidence"]


def test_5_10_has_no_layout():
    res = run_cli("check", "--root", str(kernel_root("5.10")), "--json")
    feature = json.loads(res.stdout)["feature"]
    assert feature["present"] is False and "layout" not in feature


def test_the_shared_tail_allocator_marks_the_shared_tail_layout(tmp_path):
    feature = _check_root(tmp_path, "7.3", extra_symbol=layouts.SHARED_TAIL_SYMBOL,
                          extra_config="CONFIG_VMEMMAP_OPTIMIZATION=y")
    assert feature["layout"] == "head+shared-tail"
    assert layouts.SHARED_TAIL_SYMBOL in feature["layout_evidence"]
    assert "CONFIG_VMEMMAP_OPTIMIZATION=y" in feature["layout_evidence"]


def test_markers_that_disagree_are_a_layout_vmemtrace_does_not_know(tmp_path):
    feature = _check_root(tmp_path, "7.3", extra_config="CONFIG_VMEMMAP_OPTIMIZATION=y")
    assert feature["layout"] == "unknown"
    assert "does not know" in feature["layout_evidence"]


def test_check_table_prints_the_layout(tmp_path):
    root = tmp_path / "k"
    shutil.copytree(kernel_root("6.12"), root)
    res = run_cli("check", "--root", str(root))
    line = next(x for x in res.stdout.splitlines() if x.startswith("vmemmap layout"))
    assert "head+first-tail" in line and "2 vmemmap pages kept" in line


@pytest.mark.parametrize("ppc,kept,init", [(512, 2, 128), (512, 1, 64), (1 << 18, 2, 128),
                                           (1 << 18, 1, 64)])
def test_geometry_takes_the_kept_pages_from_the_layout(ppc, kept, init):
    layout = layouts.TWO_PAGES if kept == 2 else layouts.SHARED_TAIL
    shape = geometry.RangeShape(5 * GIB_PFNS, 3 * GIB_PFNS, ppc, layout=layout)
    compounds = 3 * GIB_PFNS // ppc
    assert geometry.compound_nr_pages(shape) == init
    assert geometry.struct_pages_init_expected(shape) == compounds * init
    assert geometry.vmemmap_pages_expected(shape) == compounds * kept


def test_shared_tail_keeps_the_whole_memmap_of_a_piece_smaller_than_a_section():
    start = 5 * GIB_PFNS + geometry.PAGES_PER_SECTION // 2  # half a section, then whole ones
    nr = 3 * GIB_PFNS - geometry.PAGES_PER_SECTION // 2
    two = geometry.RangeShape(start, nr, 512, layout=layouts.TWO_PAGES)
    shared = geometry.RangeShape(start, nr, 512, layout=layouts.SHARED_TAIL)
    half = geometry.PAGES_PER_SECTION // 2
    assert geometry.vmemmap_pages_expected(two) == nr // 512 * 2
    assert geometry.vmemmap_pages_expected(shared) == half * 64 // 4096 + (nr - half) // 512


def _with_layout(name):
    def edit(evs):
        evs[0]["feature"]["layout"] = name
        evs[0]["feature"]["layout_evidence"] = "edited"
        return evs[0]
    return edit


def test_a_log_without_a_layout_is_judged_by_the_5_19_layout():
    assert "layout" not in load("6.12", "mem-2M")[0]["feature"]
    res, doc = replay(log_path("6.12", "mem-2M"))
    assert res.returncode == 0 and doc["verdict"] == "pass"
    assert doc["layout"]["name"] == "head+first-tail" and doc["layout"]["validated"] is True
    assert "2 fresh vmemmap pages of their own" in checks(doc["devices"][0])["tail-reuse"]["detail"]


def test_an_unknown_layout_is_incomplete_even_where_the_old_numbers_match(tmp_path):
    path, _ = doctor(tmp_path, "6.12", "mem-2M", _with_layout("head+future-tail"))
    res, doc = replay(path)
    assert res.returncode == 2 and doc["verdict"] == "incomplete"
    tail = checks(doc["devices"][0])["tail-reuse"]
    assert tail["status"] == "skip" and "not one vmemtrace knows" in tail["detail"]


@pytest.mark.parametrize("case", ["mem-2M", "mem-1G"])
def test_two_page_pages_judged_as_shared_tail_are_incomplete_not_fail(tmp_path, case):
    """A real two-page recording whose header says shared-tail: every number differs from the
    shared-tail model, which no running kernel has confirmed, so nothing fails."""
    path, _ = doctor(tmp_path, "6.12", case, _with_layout("head+shared-tail"))
    res, doc = replay(path)
    assert res.returncode == 2 and doc["verdict"] == "incomplete", res.stdout
    assert doc["layout"] == {"name": "head+shared-tail", "evidence": "edited", "validated": False}
    dev = doc["devices"][0]
    per = {"mem-2M": 512, "mem-1G": 1 << 18}[case]
    assert dev["vmemmap_pages"]["expected"] == 3 * GIB_PFNS // per + 1  # and the shared tail page
    assert dev["struct_pages_initialized"]["expected"] == 3 * GIB_PFNS // per * 64
    statuses = {n: c["status"] for n, c in checks(dev).items()}
    assert "fail" not in statuses.values()
    assert statuses["tail-reuse"] == statuses["init-skip"] == "skip"
    assert "comes from the kernel source" in checks(dev)["tail-reuse"]["detail"]


def test_every_page_laid_out_alike_in_an_unknown_way_is_incomplete(tmp_path):
    """Every probed compound page of a real recording laid out alike, neither as the kernel's
    layout nor unoptimised: a kernel newer than vmemtrace, not the known layout done wrong."""
    def relayout(evs):
        for c in (e for e in evs if e["type"] == "compound" and "source" not in e):
            c.update(fresh=3, reused=5, on_tail=5)
        return evs

    path, _ = doctor(tmp_path, "6.12", "mem-2M", relayout)
    res, doc = replay(path)
    assert res.returncode == 2 and doc["verdict"] == "incomplete", res.stdout
    tail = checks(doc["devices"][0])["tail-reuse"]
    assert tail["status"] == "skip" and "a layout vmemtrace does not know" in tail["detail"]


def test_one_page_laid_out_wrong_is_still_a_fail(tmp_path):
    """The known layout done wrong: pages that fit beside one that does not."""
    def break_one(evs):
        c = [e for e in evs if e["type"] == "compound" and "source" not in e][100]
        c.update(fresh=3, reused=5, on_tail=5)
        return c

    path, _ = doctor(tmp_path, "6.12", "mem-2M", break_one)
    res, doc = replay(path)
    assert res.returncode == 1 and doc["verdict"] == "fail"
    assert checks(doc["devices"][0])["tail-reuse"]["status"] == "fail"
