"""Where each argument the BPF program reads sits, found by its name in the kernel's prototype.

Pure. The kernel's BTF names every parameter of every function it has (btf.Btf.params()): an
argument is read at the position of its name there, never at a position assumed. A name that is
not there (renamed, removed) leaves its target unread, saying which; a kernel without BTF gets
the positions the version rule gives (targets.Arg.position), and `check` says they are a guess.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from vmemtrace.kernel import compat
from vmemtrace.probes.targets import Target

BY_BTF, BY_VERSION = "BTF", "version"


@dataclass(frozen=True)
class Found:
    """One target's arguments: (key, position, the name found) of each it has (a parameter that
    came with a later change is simply absent), where they came from, and what is wrong, where
    something is."""

    target: str
    positions: tuple[tuple[str, int, str], ...]  # (key, position, name)
    source: str  # BY_BTF or BY_VERSION
    problem: str | None = None

    def position(self, key: str) -> int | None:
        return next((p for k, p, _ in self.positions if k == key), None)

    def name(self, key: str) -> str | None:
        return next((n for k, _, n in self.positions if k == key), None)

    @property
    def nargs(self) -> int:
        """Arguments an fentry program lists: up to the last one it reads."""
        return max((p for _, p, _ in self.positions), default=-1) + 1

    def defines(self) -> Sequence[str]:
        """-D flags of bpf/vmemtrace.bpf.c: VT_POS_<function>__<key>, VT_NARGS_<function>."""
        out = [f"-DVT_POS_{self.target}__{k}={p}" for k, p, _ in self.positions]
        return out + [f"-DVT_NARGS_{self.target}={self.nargs}"] if out else out

    def describe(self) -> str:
        """What `check` prints: each argument's position and where it came from."""
        where = "by name in BTF" if self.source == BY_BTF else "by the version rule (no BTF: a guess)"
        args = ", ".join(f"{n}={p}" for _, p, n in self.positions)
        return f"arguments {where}: {args}" if args else ""


def find(target: Target, params: Sequence[str] | None, version: tuple,
         optional: bool | None = None) -> Found:
    """The positions of the target's arguments in `params` (its BTF prototype's parameter
    names, None without BTF for it). Without BTF, `optional` says whether the kernel has the
    parameters that came with a later change where something other than the version tells
    (the headers: program.defines()); else the version does."""
    found, missing = [], []
    for arg in target.args:
        if params is None:  # no BTF: the version rule
            has = optional if optional is not None else compat.has(version, arg.since) \
                if arg.since is not None else True
            if arg.since is None or has:
                found.append((arg.key, arg.position, arg.key))
            continue
        name = next((n for n in arg.names if n in params), None)
        if name is not None:
            found.append((arg.key, list(params).index(name), name))
        elif arg.since is None:  # a parameter every kernel with the function has
            missing.append("/".join(arg.names))
    problem = None
    if missing:
        problem = (f"signature changed: BTF's {target.name}({', '.join(params or ())}) has no "
                   f"parameter {' or '.join(repr(m) for m in missing)}: not read")
    return Found(target.name, tuple(found), BY_VERSION if params is None else BY_BTF, problem)


def find_all(targets: Sequence[Target], params: dict[str, tuple[str, ...]],
             version: tuple) -> dict[str, Found]:
    """Every target with arguments, its positions from BTF where BTF has the function."""
    return {t.name: find(t, params.get(t.name), version) for t in targets if t.args}


def compile_positions(found: Found, target: Target) -> Found:
    """What the program is compiled with: a missing argument at its version-rule position, so
    that the compile (started before the plan) still builds; the plan never attaches a target
    with a problem, so the program reading it is never run."""
    if found.problem is None:
        return found
    have = {k for k, _, _ in found.positions}
    extra = tuple((a.key, a.position, a.key) for a in target.args
                  if a.key not in have and a.since is None)
    return Found(found.target, found.positions + extra, found.source, found.problem)
