"""Whether this process may open the perf events BCC's perf buffers are made of.

Each perf buffer is a PERF_COUNT_SW_BPF_OUTPUT software event per CPU (BCC's libbpf.c,
bpf_open_perf_buffer_opts()). Debian's kernels refuse perf_event_open() without CAP_SYS_ADMIN
at kernel.perf_event_paranoid 3, their default (a Debian patch): where the probes attach by BPF
trampoline, which perf_event_open() plays no part in, that refusal comes only when the buffers
are opened, and BCC 0.26's Python crashes later in that process (a segfault at the next
garbage collection, measured in a 6.12 guest). So it is asked here first, with one event opened
and closed, and said as a reason not to trace.
"""

import ctypes
import errno
import os
import struct

SYS_PERF_EVENT_OPEN = 298  # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
# struct perf_event_attr, PERF_ATTR_SIZE_VER0 bytes: type, size, config, sample_period,
# sample_type, the rest zero (include/uapi/linux/perf_event.h).
ATTR = struct.Struct("<IIQQQ")
ATTR_SIZE = 64
PARANOID = "/proc/sys/kernel/perf_event_paranoid"


def output_blocker(cpu: int = 0) -> str | None:
    """None when a BPF output event can be opened on `cpu` (as BCC will on each), else why not."""
    attr = ctypes.create_string_buffer(ATTR.pack(PERF_TYPE_SOFTWARE, ATTR_SIZE,
                                                 PERF_COUNT_SW_BPF_OUTPUT, 1, PERF_SAMPLE_RAW),
                                       ATTR_SIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_PERF_EVENT_OPEN, attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd >= 0:
        os.close(fd)
        return None
    err = ctypes.get_errno()
    why = f"perf_event_open of a BPF output event (the perf buffers) is refused: {os.strerror(err)}"
    if err in (errno.EACCES, errno.EPERM):
        try:
            with open(PARANOID) as fh:
                level = fh.read().strip()
        except OSError:
            level = "unknown"
        why += (f" (kernel.perf_event_paranoid is {level}; above 2 it needs CAP_SYS_ADMIN, "
                "at 2 or less CAP_PERFMON)")
    return why
