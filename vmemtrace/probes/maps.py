"""Reading the program's maps and perf events by field name: the C structs (bpf/vmemtrace.h)
are the contract, nothing here repeats their layout; the compound-page map read and cleared in
batches; the hit, error and skipped-run counters."""

import ctypes
import errno
import os
import struct

from vmemtrace.errors import VmemtraceError
from vmemtrace.log import compounds, difference

DRAIN_CHUNK = 4096  # compound map entries per batch system call


def fields(c_struct) -> dict[str, int | str]:
    """A ctypes struct BCC built from the program's C declaration, by field name: the C struct
    is the contract (bpf/vmemtrace.h), nothing here repeats its layout. A char array (comm)
    is text; ctypes hands it over as bytes up to the first NUL."""
    out: dict[str, int | str] = {}
    for name, _ in c_struct._fields_:
        value = getattr(c_struct, name)
        out[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else int(value)
    return out


def _rows(array, width: int) -> list[list[int]]:
    """A C array of rows, flattened (u64 x[n * width]: BCC's types would drop a second
    dimension), as lists of width; nested arrays are flattened first."""
    flat: list[int] = []

    def walk(a):
        for x in a:
            if isinstance(x, int):
                flat.append(x)
            else:
                walk(x)

    walk(array)
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def summary_fields(v) -> dict:
    """A struct cp_sum (bpf/vmemtrace.h) by field name, its arrays as lists: classes as
    (pages, lowest-headed page), parts as [part, pages, digest sum] where it has pages, cells
    whole; (u64)-1, "none", as None."""
    out: dict[str, object] = {}
    for name, _ in v._fields_:
        value = getattr(v, name)
        if name == "classes":
            out[name] = [(int(k.pages), fields(k.first)) for k in value if k.pages]
        elif name == "parts":
            out[name] = [[i, n, d] for i, (n, d) in
                         enumerate(_rows(value, compounds.PART_WIDTH)) if n]
        elif name == "cells":
            out[name] = _rows(value, difference.CELL_WIDTH)
        else:
            out[name] = None if int(value) == (1 << 64) - 1 else int(value)
    return out


def delete(table, keys: list[int]) -> None:
    """Remove these keys from a hash map, DRAIN_CHUNK per system call."""
    from bcc.libbcc import lib

    for at in range(0, len(keys), DRAIN_CHUNK):
        chunk = keys[at:at + DRAIN_CHUNK]
        batch = (table.Key * len(chunk))(*chunk)
        count = ctypes.c_uint32(len(chunk))
        if lib.bpf_delete_batch(table.map_fd, batch, ctypes.byref(count)) != 0:
            raise VmemtraceError("cannot clear the compound-page map: "
                                 f"{os.strerror(ctypes.get_errno())}")


def read_compound(table) -> list[tuple]:
    """(head pfn, compound event) of every map entry: BPF_MAP_LOOKUP_BATCH (Linux 5.6+,
    kernel/bpf/hashtab.c) reads DRAIN_CHUNK entries per system call, where iterating the
    table costs two per entry and deleting one more (1536 entries for one 3 GiB namespace
    at 2 MiB)."""
    from bcc.libbcc import lib

    keys, values = (table.Key * DRAIN_CHUNK)(), (table.Leaf * DRAIN_CHUNK)()
    token_in, token_out = ctypes.c_uint32(0), ctypes.c_uint32(0)
    first, out = True, []
    while True:
        count = ctypes.c_uint32(DRAIN_CHUNK)
        res = lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token_in),
                                   ctypes.byref(token_out), keys, values, ctypes.byref(count))
        err = -res if res < 0 else ctypes.get_errno()
        for i in range(count.value):
            head = int(keys[i])  # a u64 key: ctypes gives an int
            ev = {"type": "compound", "head_pfn": head}
            ev.update(fields(values[i]))
            out.append((head, ev))
        if res == 0 and count.value:
            token_in.value, first = token_out.value, False
            continue
        if res == 0 or err == errno.ENOENT:  # the whole map has been read
            return out
        raise VmemtraceError(f"cannot read the compound-page map: {os.strerror(err)}")


def skipped_runs(bpf, programs: dict[str, str], misses_at: tuple[int, int] | None,
                 misses_counted: set[str]) -> int | None:
    """Probe hits whose program did not run (a kprobe's when another BPF program or a map
    system call held the CPU's bpf_prog_active: trace_call_bpf(); a trampoline's when the
    same program was already running on the CPU), summed over the attached programs, from
    bpf_prog_info.recursion_misses; None where the kernel does not count them for every
    kind attached. A skipped run is an event never seen: it makes the verdict an error,
    never a smaller count."""
    if misses_at is None or not set(programs.values()) <= misses_counted:
        return None
    from bcc.libbcc import lib

    size, offset = misses_at
    total = 0
    for fn in programs:
        info = ctypes.create_string_buffer(size)
        length = ctypes.c_uint32(size)
        # The loaded program, as its attach loaded it (BCC keys self.funcs by bytes).
        fd = bpf.funcs[fn.encode()].fd
        # libbcc's bpf_obj_get_info() (BPF_OBJ_GET_INFO_BY_FD through libbpf): the kernel
        # fills bpf_prog_info up to `size` and says how much it filled.
        if lib.bpf_obj_get_info(fd, info, ctypes.byref(length)) != 0 \
                or length.value < offset + 8:
            return None
        total += struct.unpack_from("<Q", info.raw, offset)[0]
    return total


def hits(bpf) -> dict[str, int]:
    """Entry-probe hits per function, summed over CPUs."""
    out: dict[str, int] = {}
    for per_cpu in bpf["hits"][ctypes.c_int(0)]:
        for name, n in fields(per_cpu).items():
            out[name] = out.get(name, 0) + n
    return out
