"""kernel/btf.py on BTF blobs written here from the format's definition (include/uapi/linux/btf.h),
shaped like 6.12's dev_pagemap (ranges inside an anonymous union and anonymous struct). Real
kernels' BTF is checked against their headers in the lab (test_lab_e2e_tools.py)."""

import struct

import pytest

from vmemtrace.errors import VmemtraceError
from vmemtrace.kernel import btf


class Writer:
    """Types in id order (from 1) and a deduplicated string section."""

    def __init__(self):
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.next_id = 1

    def s(self, name):
        if not name:
            return 0
        at = self.strings.find(b"\0" + name.encode() + b"\0")
        if at >= 0:
            return at + 1
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, name, kind, vlen, size_or_type, extra=b"", kind_flag=0):
        self.types += struct.pack("<III", self.s(name), (kind_flag << 31) | (kind << 24) | vlen,
                                  size_or_type) + extra
        self.next_id += 1
        return self.next_id - 1

    def int_(self, name, size):
        return self.add(name, btf.INT, 0, size, struct.pack("<I", size * 8))

    def struct_(self, name, size, members, kind=btf.STRUCT, kind_flag=0):
        extra = b"".join(struct.pack("<III", self.s(n), t, off) for n, t, off in members)
        return self.add(name, kind, len(members), size, extra, kind_flag)

    def blob(self, magic=btf.BTF_MAGIC):
        hdr = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(self.types), len(self.types),
                          len(self.strings))
        return hdr + bytes(self.types) + bytes(self.strings)


def kernel_like(flags_size=4, vpa_params=None):
    w = Writer()
    ulong, uint, int_ = w.int_("long unsigned int", 8), w.int_("unsigned int", flags_size), w.int_("int", 4)
    u64 = w.int_("long long unsigned int", 8)
    const_ulong = w.add("", btf.CONST, 0, ulong)
    w.add("", btf.PTR, 0, int_)  # noise between the types that matter
    rng = w.struct_("range", 16, [("start", u64, 0), ("end", u64, 64)])
    altmap = w.struct_("vmem_altmap", 56, [("base_pfn", ulong, 0), ("end_pfn", const_ulong, 64),
                                          ("reserve", const_ulong, 128), ("free", ulong, 192)])
    empty = w.struct_("", 0, [])
    arr = w.add("", btf.ARRAY, 0, 0, struct.pack("<III", rng, int_, 0))
    flex = w.struct_("", 0, [("__empty_ranges", empty, 0), ("ranges", arr, 0)])
    union = w.struct_("", 16, [("range", rng, 0), ("", flex, 0)], kind=btf.UNION)
    # a bitfield member (kind_flag: size in the top byte) must not move the others
    w.struct_("dev_pagemap", 160, [("altmap", altmap, 0), ("type", uint, (3 << 24) | 832),
                                   ("flags", uint, 864), ("vmemmap_shift", ulong, 896),
                                   ("nr_range", int_, 1088), ("", union, 1152)], kind_flag=1)
    w.struct_("page", 64, [("flags", ulong, 0)])
    proto = w.add("", btf.FUNC_PROTO, 2, 0, struct.pack("<IIII", w.s("pfn"), ulong, w.s("pgmap"), ulong))
    w.add("__populate_section_memmap", btf.FUNC, 0, proto)
    if vpa_params:  # vmemmap_populate_address: 5.19-6.14 (..., reuse), 6.15+ (..., ptpfn, flags)
        params = b"".join(struct.pack("<II", w.s(n), ulong) for n in vpa_params)
        w.add("vmemmap_populate_address", btf.FUNC, 0,
              w.add("", btf.FUNC_PROTO, len(vpa_params), ulong, params))
    return w


def test_layout_of_a_6_12_shaped_dev_pagemap():
    layout = btf.layout(btf.Btf(kernel_like().blob()))
    assert layout == btf.Layout(struct_page=64, pgmap_altmap=0, pgmap_flags=108, pgmap_nr_range=136,
                                pgmap_ranges=144, pgmap_vmemmap_shift=112, altmap_base_pfn=0,
                                altmap_reserve=16, altmap_free=24, range_size=16,
                                signatures=btf.Signatures())
    assert "-DLAYOUT_PGMAP_RANGES=144" in layout.defines()


@pytest.mark.parametrize("params, ptpfn", [
    (("addr", "node", "altmap", "reuse"), False),
    (("addr", "node", "altmap", "ptpfn", "flags"), True)])
def test_calling_conventions_from_function_prototypes(params, ptpfn):
    """vmemmap_populate_address's fourth argument is read where BTF names it reuse or ptpfn,
    and its name says which convention it has (a backport shows, a version would not)."""
    from vmemtrace.probes.args import find
    from vmemtrace.probes.targets import BY_NAME

    blob = btf.Btf(kernel_like(vpa_params=params).blob())
    sig = btf.layout(blob, ("vmemmap_populate_address",)).signatures
    assert sig.params == (("vmemmap_populate_address", params),)
    found = find(BY_NAME["vmemmap_populate_address"], blob.params("vmemmap_populate_address"),
                 (6, 1, 0))  # a version that says reuse: BTF decides
    assert found.position("reuse") == 3 and found.name("reuse") == ("ptpfn" if ptpfn else "reuse")


def test_no_pgmap_argument_before_5_19():
    w = kernel_like()
    w.strings = w.strings.replace(b"\0pgmap\0", b"\0pgmaq\0")
    assert "pgmap" not in btf.Btf(w.blob()).params("__populate_section_memmap")


def test_no_vmemmap_shift_before_5_17():
    w = kernel_like()
    # rename the member: a 5.10 dev_pagemap has none
    w.strings = w.strings.replace(b"\0vmemmap_shift\0", b"\0vmemmap_shifx\0")
    assert btf.layout(btf.Btf(w.blob())).pgmap_vmemmap_shift is None
    assert "LAYOUT_PGMAP_VMEMMAP_SHIFT" not in " ".join(btf.layout(btf.Btf(w.blob())).defines())


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="flags is 8 bytes, expected 4"):
        btf.layout(btf.Btf(kernel_like(flags_size=8).blob()))
    with pytest.raises(ValueError, match="bad magic"):
        btf.Btf(kernel_like().blob(magic=0x9FEB))
    blob = kernel_like().blob()
    bad = tmp_path / "vmlinux"
    bad.write_bytes(blob[:24] + blob[24:-40])  # sections claim more than is there
    with pytest.raises(VmemtraceError, match="cannot take the struct layout from it: type or string"):
        btf.read_layout(str(bad))
    with pytest.raises(VmemtraceError, match="cannot read"):
        btf.read_layout(str(tmp_path / "missing"))
    said = []  # the callers' way: None, with the reason and what they do instead said once
    assert btf.try_layout(str(bad), said.append, "using the headers instead") is None
    assert btf.try_layout(None, said.append, "using the headers instead") is None
    assert len(said) == 1 and said[0].endswith("type or string section outside the blob; "
                                               "using the headers instead")


def test_argument_counts_of_the_functions_asked_for():
    """The fentry/fexit programs are compiled for the functions BTF has, by argument count."""
    blob = btf.Btf(kernel_like(vpa_params=("addr", "node", "altmap", "ptpfn", "flags")).blob())
    sig = btf.layout(blob, ("vmemmap_populate_address", "__populate_section_memmap",
                            "vmemmap_alloc_block")).signatures
    assert sig.arity == (("vmemmap_populate_address", 5), ("__populate_section_memmap", 2))
    assert sig.defines() == ["-DVT_ARGS_vmemmap_populate_address=5",
                             "-DVT_ARGS___populate_section_memmap=2"]
    assert btf.layout(blob).signatures.arity == ()


def test_find_skips_a_name_offset_that_is_not_a_record_start():
    """find() searches the name's offset as bytes: the same number inside a record (a size, a
    type id, a member offset) is not a hit."""
    w = kernel_like()
    off = w.s("vmemmap_alloc_block")
    # a struct whose size is the name's offset, before the function of that name
    w.add("decoy", btf.STRUCT, 0, off)
    proto = w.add("", btf.FUNC_PROTO, 1, 0, struct.pack("<II", w.s("size"), 1))
    fn = w.add("vmemmap_alloc_block", btf.FUNC, 0, proto)
    blob = btf.Btf(w.blob())
    assert blob.find("vmemmap_alloc_block", (btf.FUNC,)) == fn
    assert blob.params("vmemmap_alloc_block") == ["size"]
    assert blob.find("vmemmap_alloc_block", (btf.STRUCT,)) is None
