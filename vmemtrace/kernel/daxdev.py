"""The dax devices in sysfs (/sys/bus/dax/devices/daxX.Y): name, physical range, alignment."""

from pathlib import Path
from typing import List

PAGE_SHIFT = 12


def _read(path: Path) -> str:
    return path.read_text().strip()


def inventory(root: Path = Path("/")) -> List[dict]:
    """One "device" event (events.py) per dax device that has a resource; sorted by name."""
    base = root / "sys/bus/dax/devices"
    out = []
    if not base.is_dir():
        return out
    for dev in sorted(base.iterdir()):
        try:
            start = int(_read(dev / "resource"), 0)
            size = int(_read(dev / "size"), 0)
        except (OSError, ValueError):
            continue  # a device without memory (size 0) or an older kernel's layout
        if size == 0:
            continue
        try:
            align = int(_read(dev / "align"), 0)
        except (OSError, ValueError):
            align = None
        out.append({"type": "device", "name": dev.name, "start_pfn": start >> PAGE_SHIFT,
                    "nr_pages": size >> PAGE_SHIFT, "align": align})
    return out
