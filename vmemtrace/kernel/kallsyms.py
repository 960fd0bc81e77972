"""/proc/kallsyms: which functions exist out of line, and which only as compiler clones."""

import re
from pathlib import Path

# GCC's clone suffixes (.constprop.N, .isra.N, .part.N, .cold): a clone has a changed calling
# convention, so its arguments can never be decoded by position (docs/kernels.md).
_CLONE = re.compile(r"^(?P<base>[A-Za-z0-9_]+)\.(constprop|isra|part|cold|llvm)(\.\d+)*$")


class Kallsyms:
    """Names of text and data symbols, with clones indexed by the function they were cut from."""

    def __init__(self, text_symbols: set[str], clones: dict[str, list[str]],
                 addresses: dict[str, int]):
        self.text = text_symbols
        self.clones = clones
        self.addresses = addresses  # symbol -> runtime address (KASLR applied); 0 if hidden

    def has_function(self, name: str) -> bool:
        return name in self.text

    def clones_of(self, name: str) -> list[str]:
        return sorted(self.clones.get(name, []))

    def has_data(self, name: str) -> bool:
        return name in self.addresses


def parse_kallsyms(text: str, wanted: set[str] | None = None) -> Kallsyms:
    """Parse "addr type name [module]" lines. With `wanted`, keep only those names (and their
    clones): one regular expression over the whole text finds them instead of splitting each of
    ~120k lines. The address of every wanted name is kept whatever its type letter: Debian 7.3
    lists the page-table root init_top_pgt as "T", 6.x as "D"."""
    names = "|".join(re.escape(n) for n in sorted(wanted)) if wanted is not None else r"[A-Za-z0-9_]+"
    funcs: set[str] = set()
    clones: dict[str, list[str]] = {}
    addresses: dict[str, int] = {}
    for m in re.finditer(rf" ([A-Za-z]) ((?:{names})(?:\.[A-Za-z0-9_]+)*)(?=\s|$)", text):
        kind, name = m.group(1), m.group(2)
        if kind in "tTW":
            clone = _CLONE.match(name)
            if clone:
                if wanted is None or clone.group("base") in wanted:
                    clones.setdefault(clone.group("base"), []).append(name)
            elif wanted is None or name in wanted:
                funcs.add(name)
        if wanted is None or name in wanted:
            line_start = text.rfind("\n", 0, m.start()) + 1
            try:
                addresses[name] = int(text[line_start:m.start()], 16)
            except ValueError:
                addresses[name] = 0
    return Kallsyms(funcs, clones, addresses)


def read_kallsyms(root: Path, wanted: set[str] | None = None) -> Kallsyms:
    return parse_kallsyms((root / "proc/kallsyms").read_text(errors="replace"), wanted)
