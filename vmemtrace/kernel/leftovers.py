"""kprobe events left in tracefs by tracers that died.

vmemtrace attaches through perf-event kprobes, which the kernel removes with the process. BCC
falls back to the legacy text interface (tracefs kprobe_events) where perf cannot make the probe
(kernels before 4.17, or a maxactive request); such events outlive a process killed with
SIGKILL. BCC names them "<p|r>_<function>_bcc_<pid>" (bcc src/cc/libbpf.c, bpf_attach_probe()),
so the ones of a dead process on one of our targets can be recognised and removed.
"""

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError

# "r64:kprobes/r_vmemmap_populate_address_bcc_1234 vmemmap_populate_address" (kprobe_events
# lines: kernel/trace/trace_kprobe.c, trace_kprobe_show()).
_LINE = re.compile(r"^[pr]\d*:(?P<group>[^/\s]+)/(?P<event>[pr]_\S*_bcc_(?P<pid>\d+))\s+"
                   r"(?P<symbol>[^\s+]+)")


@dataclass(frozen=True)
class Leftover:
    group: str
    event: str
    pid: int
    symbol: str

    def __str__(self) -> str:
        return f"{self.group}/{self.event} on {self.symbol} (pid {self.pid}, gone)"


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def stale(text: str, functions: Iterable[str],
          alive: Callable[[int], bool] = _pid_alive) -> list[Leftover]:
    """BCC's legacy events on one of `functions` (or their clones) whose process is gone."""
    names = set(functions)
    out = []
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if not m or m.group("symbol").split(".")[0] not in names:
            continue
        pid = int(m.group("pid"))
        if not alive(pid):
            out.append(Leftover(m.group("group"), m.group("event"), pid, m.group("symbol")))
    return out


def find(tracefs: Path, functions: Iterable[str]) -> list[Leftover]:
    try:
        text = (tracefs / "kprobe_events").read_text(errors="replace")
    except OSError:
        return []
    return stale(text, functions)


def remove(tracefs: Path, leftovers: list[Leftover]) -> None:
    """Delete them ("-:group/event", Documentation/trace/kprobetrace.rst)."""
    for item in leftovers:
        # os.write, not open(..., "a"): Python's append mode seeks to the end, and tracefs'
        # kprobe_events answers that seek with EINVAL.
        try:
            fd = os.open(tracefs / "kprobe_events", os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"-:{item.group}/{item.event}\n".encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise VmemtraceError(f"cannot remove the leftover kprobe event {item}: {e.strerror}") from None
