"""The dax devices in sysfs (/sys/bus/dax/devices/daxX.Y): name, physical range, alignment."""

from pathlib import Path

PAGE_SHIFT = 12


def _read(path: Path) -> str:
    return path.read_text().strip()


def _mappings(dev: Path) -> list[tuple[int, int]]:
    """The device's physical ranges, (start, size) in mappingN order: drivers/dax/bus.c gives
    each range of a dev_dax a mappingN directory with start and end (inclusive). A device made
    of several ranges (resized, or hmem/CXL carved in pieces) has one memmap_init_zone_device()
    per range (mm/memremap.c, memremap_pages() runs pagemap_range() per pgmap range)."""
    found = []
    for m in dev.glob("mapping[0-9]*"):
        try:
            start, end = int(_read(m / "start"), 0), int(_read(m / "end"), 0)
        except (OSError, ValueError):
            continue
        if end >= start:
            found.append((int(m.name[len("mapping"):]), start, end + 1 - start))
    return [(start, size) for _, start, size in sorted(found)]


def inventory(root: Path = Path("/")) -> list[dict]:
    """One "device" event (log/events.py) per dax device range that has memory; sorted by name.
    A device of several ranges gives one event per range, with "mapping" (its index) and
    "mappings" (their number). No "driver" key: no driver bound, so no memmap at all."""
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
        ev = {"type": "device", "name": dev.name, "start_pfn": start >> PAGE_SHIFT,
              "nr_pages": size >> PAGE_SHIFT, "align": align}
        if (dev / "driver").exists():
            ev["driver"] = (dev / "driver").resolve().name  # device_dax, or kmem (system-ram)
        ev.update(_nvdimm_parent(dev))
        ev.update(_cxl_region(root, start))
        ranges = _mappings(dev)
        if len(ranges) <= 1:
            out.append(ev)
            continue
        for i, (start, size) in enumerate(ranges):
            out.append({**ev, "start_pfn": start >> PAGE_SHIFT, "nr_pages": size >> PAGE_SHIFT,
                        "mapping": i, "mappings": len(ranges)})
    return out


def _nvdimm_parent(dev: Path) -> dict:
    """For a dax device made by `ndctl create-namespace -m devdax`, its nd_dax parent says the
    map mode ("pmem": struct pages on the device, an altmap; "ram": in RAM), and its namespace
    gives the range the kernel hands to memremap_pages(). __nvdimm_setup_pfn()
    (drivers/nvdimm/pfn_devs.c) sets that range to the namespace from res.start + start_pad to
    res.end - end_trunc, while the dax device only covers the data after the info block (dataoff):
    its end is the range's end, and start_pad is 0 for every namespace created since 5.7
    ("libnvdimm/pfn: stop padding pmem namespaces to section alignment")."""
    parent = dev.resolve().parent
    try:
        mode = _read(parent / "mode")
        namespace = _read(parent / "namespace")
        ns_start = int(_read(parent.parent / namespace / "resource"), 0)
        end = int(_read(parent / "resource"), 0) + int(_read(parent / "size"), 0)
    except (OSError, ValueError):
        return {}  # not nvdimm-backed (hmem, CXL): the dax device's range is the pgmap's
    return {"mode": mode, "namespace": namespace, "pgmap_start_pfn": ns_start >> PAGE_SHIFT,
            "pgmap_nr_pages": (end - ns_start) >> PAGE_SHIFT}


def _cxl_region(root: Path, start: int) -> dict:
    """The CXL region a device's memory lies in, named as `cxl list` names it: the region
    (regionN), the root decoder that is its fixed memory window (the region's sysfs parent,
    drivers/cxl/core/region.c devm_cxl_add_region()), and the memory devices behind its
    endpoint decoders (targetN; each endpoint port links its memdev as "uport",
    drivers/cxl/core/port.c). Matched by physical address, which holds whichever way the dax
    device was made (an nvdimm namespace on a pmem region, dax_cxl on a ram region). {} where
    none holds it."""
    for region in sorted((root / "sys/bus/cxl/devices").glob("region[0-9]*")):
        try:
            base = int(_read(region / "resource"), 0)
            size = int(_read(region / "size"), 0)
        except (OSError, ValueError):
            continue  # a region being set up has no resource yet
        if not base <= start < base + size:
            continue
        real = region.resolve()
        memdevs = []
        for target in sorted(real.glob("target[0-9]*"), key=lambda t: int(t.name[6:])):
            try:
                decoder = (root / "sys/bus/cxl/devices" / _read(target)).resolve()
            except OSError:
                continue
            uport = decoder.parent / "uport"
            if uport.exists():
                memdevs.append(uport.resolve().name)
        found = {"cxl_region": region.name, "cxl_decoder": real.parent.name,
                 "cxl_memdevs": memdevs}
        try:
            found["cxl_mode"] = _read(region / "mode")  # "pmem" or "ram"
        except OSError:
            pass
        return found
    return {}
