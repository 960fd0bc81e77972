"""/proc/vmstat nr_memmap_pages: the kernel's own count of memmap pages (6.11+)."""

from pathlib import Path

from vmemtrace.errors import VmemtraceError


def parse_nr_memmap_pages(text: str) -> int | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "nr_memmap_pages":
            if not parts[1].isdigit():
                raise VmemtraceError(f"/proc/vmstat: nr_memmap_pages is not a count: {parts[1][:20]!r}")
            return int(parts[1])
    return None


def read_nr_memmap_pages(root: Path = Path("/")) -> int | None:
    try:
        return parse_nr_memmap_pages((root / "proc/vmstat").read_text(errors="replace"))
    except OSError:
        return None
