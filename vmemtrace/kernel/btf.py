"""The struct layout the BPF program reads, taken from the kernel's own BTF.

/sys/kernel/btf/vmlinux is the kernel's type information (CONFIG_DEBUG_INFO_BTF). Reading the
few offsets the program needs from it, instead of letting BCC parse linux/mm_types.h and
linux/memremap.h, takes the BPF compile from ~14 s to ~5 s in a TCG guest (bench/, docs/performance.md).

Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst. A header, then the type
section (records of u32 words: name_off, info, size|type, then kind-specific words) and the
string section. Type ids count from 1 in section order; 0 is void.
"""

import bisect
import functools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vmemtrace.errors import VmemtraceError

BTF_MAGIC = 0xEB9F
HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off/len, str_off/len

# BTF_KIND_* (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


def extra_words(kind: int, vlen: int) -> int:
    """u32 words that follow the 3-word btf_type of this kind (btf.rst, "Type Encoding")."""
    if kind in (INT, VAR, DECL_TAG):
        return 1
    if kind == ARRAY:
        return 3  # struct btf_array
    if kind in (STRUCT, UNION, DATASEC, ENUM64):
        return 3 * vlen  # btf_member / btf_var_secinfo / btf_enum64
    if kind in (ENUM, FUNC_PROTO):
        return 2 * vlen  # btf_enum / btf_param
    return 0


FIXED = tuple(3 + extra_words(k, 0) for k in range(32))
PER_VLEN = tuple(extra_words(k, 1) - extra_words(k, 0) for k in range(32))


class Btf:
    """The types of one BTF blob, indexed by id; names decoded only when asked for."""

    def __init__(self, data: bytes):
        if len(data) < HEADER.size:
            raise ValueError("shorter than a BTF header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            HEADER.unpack_from(data)
        if magic != BTF_MAGIC:
            raise ValueError(f"bad magic {magic:#x} (not little-endian BTF)")
        if version != 1:
            raise ValueError(f"BTF version {version}, only 1 is known")
        types = hdr_len + type_off
        strings = hdr_len + str_off
        if type_len % 4 or types + type_len > len(data) or strings + str_len > len(data):
            raise ValueError("type or string section outside the blob")
        self._raw = bytes(data[types:types + type_len])
        self._words = memoryview(self._raw).cast("I")
        self._strings = bytes(data[strings:strings + str_len])
        self._start: list[int] = [0]  # word index of each type id's record; id 0 is void
        # Record length = FIXED[kind] + PER_VLEN[kind] * vlen words, looked up rather than
        # computed per record: this loop runs once per type (~120k) at every start-up.
        words, i, end, add = self._words, 0, len(self._words), self._start.append
        while i + 3 <= end:
            add(i)
            info = words[i + 1]
            kind = (info >> 24) & 0x1F
            i += FIXED[kind] + PER_VLEN[kind] * (info & 0xFFFF)
        if i != end:
            raise ValueError("type section ends inside a record")

    def name(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off:end if end >= 0 else None].decode("ascii", "replace")

    def _name_offset(self, name: str) -> int | None:
        """The string section is deduplicated: one offset per name."""
        needle = b"\0" + name.encode() + b"\0"
        at = self._strings.find(needle)
        return None if at < 0 else at + 1

    def kind(self, tid: int) -> int:
        return (self._words[self._start[tid] + 1] >> 24) & 0x1F

    def find(self, name: str, kinds: tuple[int, ...]) -> int | None:
        """The first type id of one of these kinds with this name. The name's offset is searched
        for as bytes (a record starts with its name_off word), then each hit is checked to be
        a record's start: a few candidates instead of a Python loop over every type."""
        off = self._name_offset(name)
        if off is None:
            return None
        needle, raw, start = struct.pack("<I", off), self._raw, self._start
        at = raw.find(needle)
        while at >= 0:
            word = at // 4
            tid = bisect.bisect_left(start, word, 1)
            if at % 4 == 0 and tid < len(start) and start[tid] == word \
                    and self.kind(tid) in kinds:
                return tid
            at = raw.find(needle, at + 1)
        return None

    def size(self, tid: int) -> int:
        """Byte size of a type, through typedefs and qualifiers (btf.rst: size for INT,
        STRUCT, UNION, ENUM, FLOAT; type for the modifiers)."""
        for _ in range(32):
            i, kind = self._start[tid], self.kind(tid)
            if kind in MODIFIERS:
                tid = self._words[i + 2]
                continue
            if kind == PTR:
                return 8
            if kind == ARRAY:
                elem, nelems = self._words[i + 4], self._words[i + 5]
                return self.size(elem) * nelems
            return self._words[i + 2]
        raise ValueError(f"type {tid}: modifier chain too long")

    def members(self, tid: int) -> Iterator[tuple[str, int, int]]:
        """(name, type id, byte offset) of a struct or union; anonymous members are descended
        into (dev_pagemap's ranges sits in an anonymous union, 6.12 also wraps it in an anonymous
        struct: DECLARE_FLEX_ARRAY)."""
        i = self._start[tid]
        info = self._words[i + 1]
        kind_flag = info >> 31
        for m in range(info & 0xFFFF):
            name_off, mtype, offset = self._words[i + 3 + 3 * m:i + 6 + 3 * m]
            bits = offset & 0xFFFFFF if kind_flag else offset  # kind_flag: bitfield size above
            name = self.name(name_off) if name_off else ""
            if not name and self.kind(mtype) in (STRUCT, UNION):
                for inner, itype, ioff in self.members(mtype):
                    yield inner, itype, bits // 8 + ioff
            else:
                yield name, mtype, bits // 8
    def params(self, func: str) -> list[str] | None:
        """Parameter names of a function (FUNC -> FUNC_PROTO -> btf_param), None when the BTF has
        no such function: pahole records only functions ftrace can see (not notrace, inlined or
        clones)."""
        tid = self.find(func, (FUNC,))
        if tid is None:
            return None
        proto = self._words[self._start[tid] + 2]
        if self.kind(proto) != FUNC_PROTO:
            raise ValueError(f"{func}: its type is not a FUNC_PROTO")
        i, vlen = self._start[proto], self._words[self._start[proto] + 1] & 0xFFFF
        return [self.name(self._words[i + 3 + 2 * p]) for p in range(vlen)]


@dataclass(frozen=True)
class Signatures:
    """The prototypes of the functions asked for that the BTF has: each parameter's name, by
    which the BPF program's arguments are found (probes/args.py)."""

    params: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (function, parameter names)

    @property
    def arity(self) -> tuple[tuple[str, int], ...]:
        """(function, argument count): a BPF trampoline (fentry/fexit) can be attached only to
        a function in BTF, and fexit finds the return value after the arguments
        (bpf/vmemtrace.bpf.c, VT_ARGS_<function>)."""
        return tuple((name, len(p)) for name, p in self.params)

    def defines(self) -> list[str]:
        return [f"-DVT_ARGS_{name}={n}" for name, n in self.arity]


def signatures(btf: Btf, functions: tuple[str, ...] = ()) -> Signatures:
    params = {name: btf.params(name) for name in functions}
    return Signatures(tuple((name, tuple(p)) for name, p in params.items() if p is not None))


@dataclass(frozen=True)
class Layout:
    """Byte sizes and offsets the BPF program reads (bpf/vmemtrace.bpf.c, LAYOUT_*)."""
    struct_page: int          # sizeof(struct page)
    pgmap_altmap: int         # offsetof(struct dev_pagemap, altmap)
    pgmap_flags: int
    pgmap_nr_range: int
    pgmap_ranges: int
    pgmap_vmemmap_shift: int | None  # None before 5.17
    altmap_base_pfn: int      # offsets in struct vmem_altmap
    altmap_reserve: int
    altmap_free: int
    range_size: int           # sizeof(struct range)
    signatures: Signatures = Signatures()
    mem_section: int | None = None  # sizeof(struct mem_section), for the walk (not the BPF program)
    # (sizeof(struct bpf_prog_info), offsetof(.., recursion_misses)): the skipped-run count the
    # tracer reads back (probes/maps.py); None where the kernel has no such member (< 5.12)
    prog_info_misses: tuple[int, int] | None = None
    # struct zone has vmemmap_tails[]: HVO maps tails onto a page shared per zone and order
    # (judge/hvo.py); not read by the BPF program
    zone_vmemmap_tails: bool = False

    def defines(self) -> list[str]:
        out = []
        for key, value in vars(self).items():
            if value is not None and key not in ("signatures", "mem_section", "prog_info_misses",
                                                 "zone_vmemmap_tails"):
                out.append(f"-DLAYOUT_{key.upper()}={value}")
        return out


# Member -> byte size the BPF program reads it with (include/linux/memremap.h, mmzone.h):
# a layout whose sizes differ is refused rather than read wrongly.
PGMAP_MEMBERS = {"altmap": None, "flags": 4, "nr_range": 4, "ranges": None, "vmemmap_shift": 8}
ALTMAP_MEMBERS = {"base_pfn": 8, "reserve": 8, "free": 8}


def _struct_members(btf: Btf, name: str, wanted: dict[str, int | None]) -> dict[str, int]:
    tid = btf.find(name, (STRUCT,))
    if tid is None:
        raise ValueError(f"no struct {name}")
    found = {}
    for member, mtype, offset in btf.members(tid):
        if member in wanted and member not in found:
            size = wanted[member]
            if size is not None and btf.size(mtype) != size:
                raise ValueError(f"struct {name}.{member} is {btf.size(mtype)} bytes, "
                                 f"expected {size}")
            found[member] = offset
    return found


def layout(btf: Btf, functions: tuple[str, ...] = ()) -> Layout:
    pgmap = _struct_members(btf, "dev_pagemap", PGMAP_MEMBERS)
    altmap = _struct_members(btf, "vmem_altmap", ALTMAP_MEMBERS)
    missing = [f"dev_pagemap.{m}" for m in PGMAP_MEMBERS if m not in pgmap and m != "vmemmap_shift"]
    missing += [f"vmem_altmap.{m}" for m in ALTMAP_MEMBERS if m not in altmap]
    if missing:
        raise ValueError("no member " + ", ".join(missing))
    page, rng = btf.find("page", (STRUCT,)), btf.find("range", (STRUCT,))
    if page is None or rng is None:
        raise ValueError("no struct page or struct range")
    return Layout(struct_page=btf.size(page), pgmap_altmap=pgmap["altmap"],
                  pgmap_flags=pgmap["flags"], pgmap_nr_range=pgmap["nr_range"],
                  pgmap_ranges=pgmap["ranges"], pgmap_vmemmap_shift=pgmap.get("vmemmap_shift"),
                  altmap_base_pfn=altmap["base_pfn"], altmap_reserve=altmap["reserve"],
                  altmap_free=altmap["free"], range_size=btf.size(rng),
                  signatures=signatures(btf, functions), mem_section=_size_of(btf, "mem_section"),
                  prog_info_misses=_prog_info_misses(btf),
                  zone_vmemmap_tails=_has_member(btf, "zone", "vmemmap_tails"))


def _has_member(btf: Btf, struct_name: str, member: str) -> bool:
    tid = btf.find(struct_name, (STRUCT,))
    return tid is not None and any(m == member for m, _, _ in btf.members(tid))


def _prog_info_misses(btf: Btf) -> tuple[int, int] | None:
    tid = btf.find("bpf_prog_info", (STRUCT,))
    if tid is None:
        return None
    offset = next((o for m, _, o in btf.members(tid) if m == "recursion_misses"), None)
    return None if offset is None else (btf.size(tid), offset)


def _size_of(btf: Btf, name: str) -> int | None:
    tid = btf.find(name, (STRUCT,))
    return None if tid is None else btf.size(tid)


@functools.cache
def read_layout(path: str, functions: tuple[str, ...] = ()) -> Layout:
    """The layout from a BTF file, with the argument counts of these functions (the probe
    targets); a one-line VmemtraceError when it cannot be had. Read once per process: the
    running kernel's BTF does not change, and the compile, the attach plan and the audit of
    existing devices want it (exporter start-up)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise VmemtraceError(f"cannot read {path}: {e.strerror}") from None
    try:
        return layout(Btf(data), functions)
    except (ValueError, IndexError, struct.error) as e:
        raise VmemtraceError(f"{path}: cannot take the struct layout from it: {e}") from None


def try_layout(path: str | None, progress: Callable[[str], None],
               instead: str, functions: tuple[str, ...] = ()) -> Layout | None:
    """The layout, or None: without BTF, or with the reason said and what the caller does
    `instead`."""
    if not path:
        return None
    try:
        return read_layout(path, functions)
    except VmemtraceError as e:
        progress(f"{e}; {instead}")
        return None
