"""ftrace's view of what can be probed: available_filter_functions and the kprobe blacklist.

A function in kallsyms but not in available_filter_functions is "notrace": on Debian 6.1 the
__meminit vmemmap functions sit in .meminit.text, which ftrace does not record, and a kprobe on
them fails with EINVAL ("Could not probe notrace function", kernel/trace/trace_kprobe.c,
within_notrace_func()) unless CONFIG_KPROBE_EVENTS_ON_NOTRACE is set.
"""

import re
from pathlib import Path

TRACEFS_DIRS = ("sys/kernel/tracing", "sys/kernel/debug/tracing")
KPROBE_BLACKLIST = "sys/kernel/debug/kprobes/blacklist"


def tracefs(root: Path) -> Path | None:
    """The mounted tracefs (its README is always there), or None."""
    for rel in TRACEFS_DIRS:
        if (root / rel / "README").exists():
            return root / rel
    return None


def parse_filter_functions(text: str, wanted: set[str] | None = None) -> set[str]:
    """Lines are "name" or "name [module]"; newer kernels may list a name more than once.
    With `wanted`, only those names are looked for (one regular expression over ~50k lines)."""
    if wanted is None:
        return {line.split()[0] for line in text.splitlines() if line.strip()}
    names = "|".join(re.escape(n) for n in sorted(wanted))
    return set(re.findall(rf"^({names})(?=\s|$)", text, re.M))


def read_filter_functions(root: Path, wanted: set[str] | None = None) -> set[str] | None:
    base = tracefs(root)
    if base is None or not (base / "available_filter_functions").exists():
        return None
    return parse_filter_functions((base / "available_filter_functions").read_text(errors="replace"),
                                  wanted)


def parse_kprobe_blacklist(text: str) -> set[str]:
    """Lines are "0xstart-0xend\tname" (kernel/kprobes.c, kprobe_blacklist_seq_show())."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            names.add(parts[1])
    return names


def read_kprobe_blacklist(root: Path) -> set[str] | None:
    path = root / KPROBE_BLACKLIST
    try:
        return parse_kprobe_blacklist(path.read_text(errors="replace"))
    except OSError:
        return None


def has_kprobe_events(root: Path) -> bool:
    base = tracefs(root)
    return base is not None and (base / "kprobe_events").exists()
