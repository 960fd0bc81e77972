"""Tables for people, JSON for scripts. No logic beyond layout."""

import json
import sys

from tabulate import tabulate


def emit_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _yn(value) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def check_table(report: dict) -> str:
    opts = report["config"]["options"]
    head = [
        ("kernel", report["kernel"]),
        ("compound-devmap optimisation", f"{_yn(report['feature']['present'])}: "
                                         f"{report['feature']['evidence']}"),
        ("config", report["config"]["source"] or "not found (/proc/config.gz, /boot/config-*)"),
        ("config options", " ".join(f"{k}={v}" for k, v in opts.items()) if opts else "-"),
        ("privileged", _yn(report["privileged"])),
        ("BTF", report["btf"] or "no"),
        ("headers for BCC", report["headers"] or "no"),
        ("bcc", report["bcc"] or "not importable"),
        ("can trace", "yes" if report["can_trace"] else "no"),
    ]
    rows = [(name, t["availability"], t["strategy"], t["reason"])
            for name, t in report["targets"].items()]
    return (tabulate(head, tablefmt="plain") + "\n\n"
            + tabulate(rows, headers=["probe target", "availability", "strategy", "why"]))
