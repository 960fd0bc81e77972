"""/proc/kallsyms: which functions exist out of line, and which only as compiler clones."""

import re
from pathlib import Path
from typing import Dict, List, Set

# GCC's clone suffixes (.constprop.N, .isra.N, .part.N, .cold): a clone has a changed calling
# convention, so its arguments can never be decoded by position (lab-notes.md).
_CLONE = re.compile(r"^(?P<base>[A-Za-z0-9_]+)\.(constprop|isra|part|cold|llvm)(\.\d+)*$")


class Kallsyms:
    """Names of text and data symbols, with clones indexed by the function they were cut from."""

    def __init__(self, text_symbols: Set[str], clones: Dict[str, List[str]],
                 addresses: Dict[str, int]):
        self.text = text_symbols
        self.clones = clones
        self.addresses = addresses  # data symbols: runtime address (KASLR applied); 0 if hidden

    def has_function(self, name: str) -> bool:
        return name in self.text

    def clones_of(self, name: str) -> List[str]:
        return sorted(self.clones.get(name, []))

    def has_data(self, name: str) -> bool:
        return name in self.addresses


def parse_kallsyms(text: str, wanted: Set[str] = None) -> Kallsyms:
    """Parse "addr type name [module]" lines. With `wanted`, keep only those names (and their
    clones) and the data symbols: a full kallsyms holds ~200k lines we do not need to keep."""
    funcs, clones, addresses = set(), {}, {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        kind, name = parts[1], parts[2]
        if kind in "tTW":
            m = _CLONE.match(name)
            if m:
                base = m.group("base")
                if wanted is None or base in wanted:
                    clones.setdefault(base, []).append(name)
            elif wanted is None or name in wanted:
                funcs.add(name)
        elif kind in "dDbBrR" and (wanted is None or name in wanted):
            try:
                addresses[name] = int(parts[0], 16)
            except ValueError:
                addresses[name] = 0
    return Kallsyms(funcs, clones, addresses)


def read_kallsyms(root: Path, wanted: Set[str] = None) -> Kallsyms:
    return parse_kallsyms((root / "proc/kallsyms").read_text(errors="replace"), wanted)
