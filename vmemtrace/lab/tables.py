"""The lab's per-case table."""

from tabulate import tabulate


def _mib(n) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n is not None else "-"


def case_table(doc: dict) -> str:
    rows = []
    for entry in doc["cases"]:
        r = entry["result"]
        ns = r.get("namespace") or {}
        region = ns.get("daxregion") or {}
        devices = region.get("devices") or [{}]
        rows.append((entry["case"], devices[0].get("chardev", "-"), ns.get("map", "-"),
                     _mib(ns.get("size")), ns.get("align", region.get("align", "-")),
                     r["verdict"], r.get("error", "")))
    return tabulate(rows, headers=["case", "device", "map", "size", "align", "verdict", "note"])
