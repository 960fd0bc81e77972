"""The kernel headers BCC compiles against, read to choose the BPF program's defines.

Debian splits them: /lib/modules/<release>/build holds the generated files and a Makefile that
includes the shared tree (/usr/src/linux-headers-<version>-common): on its first line up to 6.x,
on its second from 7.x, after a KBUILD_OUTPUT= line.
"""

import re
from pathlib import Path


def header_dirs(build: Path) -> list[Path]:
    dirs = [build]
    makefile = build / "Makefile"
    try:
        m = re.search(r"^include\s+(\S+)/Makefile\s*$", makefile.read_text(errors="replace"), re.M)
    except OSError:
        m = None
    if m:
        dirs.append(Path(m.group(1)))
    return dirs


def read_header(build: Path, rel: str) -> str | None:
    for base in header_dirs(build):
        path = base / rel
        if path.exists():
            return path.read_text(errors="replace")
    return None


def has_vmemmap_shift(memremap_h: str) -> bool:
    """struct dev_pagemap gained vmemmap_shift in 5.17 (include/linux/memremap.h)."""
    return re.search(r"\bunsigned long\s+vmemmap_shift\s*;", memremap_h) is not None


def section_memmap_has_pgmap(mm_h: str) -> bool:
    """__populate_section_memmap() gained its pgmap argument in 5.19 (include/linux/mm.h)."""
    m = re.search(r"__populate_section_memmap\(([^;]*)\);", mm_h)
    return bool(m) and "dev_pagemap" in m.group(1)
