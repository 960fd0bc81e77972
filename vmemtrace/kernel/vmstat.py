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


def vmstat_event(when: str, root: Path = Path("/")) -> dict | None:
    """The "vmstat" event (log/events.py): nr_memmap_pages, and nr_memmap_boot_pages (the boot
    memmap's pages, which HVO frees and restore moves to nr_memmap_pages) where the kernel has
    it; None on a kernel without the counters (before 6.11)."""
    try:
        text = (root / "proc/vmstat").read_text(errors="replace")
    except OSError:
        return None
    pages = parse_nr_memmap_pages(text)
    if pages is None:
        return None
    ev = {"type": "vmstat", "when": when, "nr_memmap_pages": pages}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "nr_memmap_boot_pages" and parts[1].isdigit():
            ev["nr_memmap_boot_pages"] = int(parts[1])
    return ev
