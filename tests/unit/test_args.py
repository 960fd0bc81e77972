"""Arguments by name: the plan and the BPF build read each argument where the kernel's own BTF
prototype names it (Debian 6.12's real BTF, tests/fixtures/btf), and a parameter the program
reads that the prototype does not name leaves its target unread, saying which."""

import json
import lzma
import shutil
import struct
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, kernel_root, run_cli
from vmemtrace.kernel import btf
from vmemtrace.probes import args
from vmemtrace.probes.program import defines
from vmemtrace.probes.targets import BY_NAME, FUNCTIONS

BTF_612 = FIXTURES / "btf" / "6.12.118+deb12-amd64.btf.xz"


@pytest.fixture(scope="module")
def real_btf() -> bytes:
    return lzma.decompress(BTF_612.read_bytes())


def renamed(data: bytes, function: str, param: str, new: str) -> bytes:
    """The BTF with one parameter of one function's prototype renamed: a new string appended
    to the string section (the blob's last), the parameter's name_off pointed at it."""
    blob = btf.Btf(data)
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = \
        btf.HEADER.unpack_from(data)
    assert hdr_len + str_off + str_len == len(data)
    fn = blob.find(function, (btf.FUNC,))
    proto = blob._words[blob._start[fn] + 2]
    names = blob.params(function)
    word = blob._start[proto] + 3 + 2 * names.index(param)
    at = hdr_len + type_off + 4 * word
    out = bytearray(data + new.encode() + b"\0")
    struct.pack_into("<I", out, at, str_len)
    struct.pack_into("<I", out, 20, str_len + len(new) + 1)
    return bytes(out)


def check_with(tmp_path, blob: bytes) -> dict:
    """`check --root --json` on the recorded 6.12 tree with this BTF as its kernel's."""
    root = tmp_path / "k"
    shutil.copytree(kernel_root("6.12"), root)
    (root / "sys/kernel/btf").mkdir(parents=True, exist_ok=True)
    (root / "sys/kernel/btf/vmlinux").write_bytes(blob)
    res = run_cli("check", "--root", str(root), "--json")
    assert "Traceback" not in res.stderr, res.stderr
    return json.loads(res.stdout)


def test_every_argument_is_found_by_name_in_the_real_btf(real_btf):
    params = dict(btf.layout(btf.Btf(real_btf), FUNCTIONS).signatures.params)
    found = args.find_all([BY_NAME[n] for n in FUNCTIONS], params, (6, 12, 118))
    assert all(f.problem is None for f in found.values())
    # inlined on this build (not in kallsyms, so never probed): BTF has no prototype of it
    assert {n for n, f in found.items() if f.source == args.BY_VERSION} == {"altmap_alloc_block_buf"}
    # the positions the version rule would have guessed, confirmed by name on this kernel
    for name, f in found.items():
        for arg in BY_NAME[name].args:
            assert f.position(arg.key) == arg.position, (name, arg)
    assert found["vmemmap_populate_address"].name("reuse") == "reuse"  # 6.12: before ptpfn


def test_the_plan_with_the_real_btf_is_the_plan_without(tmp_path, real_btf):
    with_btf = check_with(tmp_path, real_btf)
    without = json.loads(run_cli("check", "--root", str(kernel_root("6.12")), "--json").stdout)
    assert {n: t["strategy"] for n, t in with_btf["targets"].items()} == \
        {n: t["strategy"] for n, t in without["targets"].items()}
    assert with_btf["facts_from"]["arguments"] == "BTF and version"  # altmap_alloc_block_buf
    assert without["facts_from"]["arguments"] == "version"
    assert "by the version rule (no BTF: a guess)" in \
        without["targets"]["vmemmap_populate_address"]["reason"]


def test_a_renamed_parameter_leaves_its_target_unread_naming_it(tmp_path, real_btf):
    doc = check_with(tmp_path, renamed(real_btf, "memmap_init_compound", "nr_pages", "npages"))
    mic = doc["targets"]["memmap_init_compound"]
    assert mic["strategy"] == "count", mic  # its calls counted, its nr_pages never read
    assert "has no parameter 'nr_pages'" in mic["reason"] and "npages" in mic["reason"]
    # the struct pages initialised are then counted one by one instead
    assert doc["targets"]["__init_zone_device_page"]["strategy"] != "unused"


def test_a_renamed_parameter_of_the_required_target_is_a_blocker(tmp_path, real_btf):
    doc = check_with(tmp_path, renamed(real_btf, "memmap_init_zone_device", "pgmap", "map"))
    assert doc["targets"]["memmap_init_zone_device"]["strategy"] == "unavailable"
    assert any("has no parameter 'pgmap'" in b for b in doc["blockers"]), doc["blockers"]
    assert "target_unavailable" in doc["blocker_codes"]


def test_a_backported_ptpfn_is_read_from_btf_not_from_the_version(real_btf):
    """vmemmap_populate_address(addr, node, altmap, ptpfn, ...) on a 6.12 (6.15's convention
    backported): BTF's parameter name decides, so the program compares with -1, not NULL."""
    blob = renamed(real_btf, "vmemmap_populate_address", "reuse", "ptpfn")
    layout = btf.layout(btf.Btf(blob), FUNCTIONS)
    flags, sources = defines((6, 12, 118), Path("/nonexistent"), layout)
    assert "-DVPA_PTPFN" in flags and sources["vpa_ptpfn"] == "BTF"
    flags, _ = defines((6, 12, 118), Path("/nonexistent"), btf.layout(btf.Btf(real_btf), FUNCTIONS))
    assert "-DVPA_PTPFN" not in flags
    assert "-DVT_POS_vmemmap_populate_address__reuse=3" in flags
    assert "-DVT_NARGS___populate_section_memmap=5" in flags


def test_without_btf_the_version_rule_gives_the_positions():
    flags, sources = defines((6, 12, 0), Path("/nonexistent"), None)
    assert sources["arguments"] == "version" and sources["vpa_ptpfn"] == "version"
    assert "-DVT_POS_memmap_init_compound__nr_pages=5" in flags
    # no headers here: __populate_section_memmap's pgmap is not known to be there, so not read
    assert not any(f.startswith("-DVT_POS___populate_section_memmap__pgmap") for f in flags)
