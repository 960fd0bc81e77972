"""The attach plan: per target, whether this kernel lets us probe it, and how we will see it.

Availability is read from the kernel (kernel/kallsyms.py, kernel/ftrace.py), never assumed
from the version alone.
"""

from dataclasses import dataclass

from vmemtrace.kernel.kallsyms import Kallsyms
from vmemtrace.probes import args, targets
from vmemtrace.probes.targets import BY_NAME, TARGETS, WALK, Target

TRACEABLE = "traceable"
NOTRACE = "notrace"
BLACKLISTED = "blacklisted"
CLONE = "clone"
INLINED = "inlined"
ABSENT = "absent"
UNKNOWN = "unknown"

# Strategies under which the target's own probes are attached (the rest: fallback, walk,
# unused, unavailable). "count": hits only, no argument read (a clone, or one call per struct
# page).
COUNT = "count"
# By BPF trampoline (fentry/fexit), where the kernel has them and its BTF has the function:
# cheaper per hit than kprobes (docs/performance.md, per-hit table); kprobes everywhere else.
TRAMPOLINE = ("fentry", "fentry+fexit")
ATTACHED = ("kprobe", "kretprobe", "kprobe+kretprobe", COUNT) + TRAMPOLINE
WALK_STRATEGY = "walk"  # read the page tables after the fact (kernel/kcore.py)
UNUSED = "unused"
EXCLUDED = "excluded"  # the user said --no-probe
AUDITED = "not traced (audit)"  # an audit's header: nothing attached, the walk only
# Every strategy a target can be given: what an event log's header may say.
STRATEGIES = frozenset(ATTACHED + (WALK_STRATEGY, UNUSED, EXCLUDED, AUDITED, "fallback",
                                   "unavailable"))


def is_attached(strategy: str) -> bool:
    return strategy in ATTACHED


@dataclass
class TargetStatus:
    name: str
    availability: str  # one of the constants above
    strategy: str  # kprobe+kretprobe, fentry+fexit, count, fallback, walk, unavailable, ...
    reason: str
    clones: list[str]

    def as_json(self) -> dict:
        return {"availability": self.availability, "strategy": self.strategy,
                "reason": self.reason, "clones": self.clones}


def classify(target: Target, version: tuple, syms: Kallsyms,
             filter_functions: set[str] | None, blacklist: set[str] | None):
    """(availability, reason) of one target on this kernel."""
    name = target.name
    if syms.has_function(name):
        if blacklist is not None and name in blacklist:
            return BLACKLISTED, "in the kprobe blacklist"
        if filter_functions is None:
            return UNKNOWN, "in kallsyms; no tracefs to tell whether ftrace records it"
        if name in filter_functions:
            return TRACEABLE, "in kallsyms and available_filter_functions"
        return NOTRACE, "in kallsyms but not in available_filter_functions (notrace)"
    clones = syms.clones_of(name)
    if clones:
        return CLONE, (f"only as compiler clone {', '.join(clones)}: "
                       "its arguments cannot be decoded by position")
    if version[:2] >= target.since:
        return INLINED, (f"not in kallsyms although the source has it since "
                         f"{target.since[0]}.{target.since[1]}: inlined into its caller")
    return ABSENT, f"not in this kernel (added in {target.since[0]}.{target.since[1]})"


@dataclass(frozen=True)
class Trampolines:
    """What BPF trampolines allow here: the targets the kernel's BTF has (kernel/btf.py), and
    why none can be attached that way (None: they can; kernel/trampoline.py)."""
    functions: frozenset[str] = frozenset()
    blocker: str | None = "not asked"


def _strategy(t: Target, availability: str, reason: str, raw: dict, chosen: dict,
              kprobes: bool, walk_blocker: str | None, trampolines: Trampolines,
              found: args.Found | None = None):
    """(strategy, reason) of one target, given the strategies chosen for those before it and
    where its arguments are (probes/args.py): a target whose arguments the kernel's prototype
    does not name is never decoded, only counted where it can be, as a clone is."""
    problem = found.problem if found is not None else None
    undecodable = problem is not None and availability == TRACEABLE
    if undecodable:
        reason = f"{reason}; {problem}"
    elif found is not None and found.source == args.BY_VERSION and t.programs \
            and availability == TRACEABLE:
        reason = f"{reason}; {found.describe()}"
    countable = (availability == CLONE or undecodable) and t.count is not None
    if availability == TRACEABLE and t.programs and not undecodable:
        if trampolines.blocker is None and t.name in trampolines.functions:
            return t.trampoline_attach, f"{reason}; by BPF trampoline (in BTF)"
        if kprobes:
            why = trampolines.blocker or "not in the kernel's BTF"
            return t.attach, f"{reason}; kprobes, not a BPF trampoline: {why}"
    if (availability == TRACEABLE or countable) and not kprobes:
        return "unavailable", f"{reason}; this kernel has no kprobes (CONFIG_KPROBES)"
    if undecodable and not countable:
        availability = NOTRACE  # what follows: its fallback, or the walk, or nothing
    if t.unless_decoded and (availability == TRACEABLE or countable):
        other = chosen[t.unless_decoded]
        if is_attached(other) and other != COUNT:
            return UNUSED, (f"{reason}; not attached: {t.unless_decoded}'s arguments tell the "
                            "same with one hit per compound page instead of one per struct page")
        return COUNT, f"{reason}; its hits counted, one per struct page initialised"
    if countable:
        return COUNT, f"{reason}; its hits counted, no argument read"
    if t.fallback in raw and raw[t.fallback][0] == TRACEABLE and kprobes:
        return "fallback", f"{reason}; seen through {t.fallback}"
    if t.fallback == WALK and walk_blocker is None:
        return WALK_STRATEGY, f"{reason}; its result read from the vmemmap page tables after each range"
    if t.fallback == WALK:
        return "unavailable", f"{reason}; no page-table walk either: {walk_blocker}"
    return "unavailable", reason


def build_plan(version: tuple, syms: Kallsyms, filter_functions: set[str] | None,
               blacklist: set[str] | None, kprobes: bool,
               walk_blocker: str | None = "not asked", exclude=(),
               trampolines: Trampolines = Trampolines(),
               arguments: dict[str, args.Found] | None = None) -> list[TargetStatus]:
    """One TargetStatus per target, in TARGETS order.

    A traceable target is attached by BPF trampoline where the kernel has them and its BTF has
    the function, by kprobes otherwise. A target that cannot be probed names its fallback when
    the fallback itself is probeable, or "walk" when the page-table walk can read its result
    (walk_blocker None); otherwise it is "unavailable": we never pretend to see what we cannot.
    A clone is attached only to count its hits, by kprobe (targets.Target.count): BTF has no
    clones.
    """
    raw = {t.name: classify(t, version, syms, filter_functions, blacklist) for t in TARGETS}
    plan: dict[str, TargetStatus] = {}
    chosen: dict[str, str] = {}
    # A target attached only when another cannot be decoded is decided after that one.
    for t in sorted(TARGETS, key=lambda t: t.unless_decoded is not None):
        availability, reason = raw[t.name]
        if t.name in exclude:
            strategy, reason = EXCLUDED, f"{reason}; left unattached (--no-probe)"
        else:
            strategy, reason = _strategy(t, availability, reason, raw, chosen, kprobes, walk_blocker,
                                         trampolines, (arguments or {}).get(t.name))
        chosen[t.name] = strategy
        plan[t.name] = TargetStatus(t.name, availability, strategy, reason, syms.clones_of(t.name))
    return [plan[t.name] for t in TARGETS]


def probed_symbols(status: TargetStatus) -> list[str]:
    """The kernel symbols a planned target's probes attach to: the function, or its clones."""
    if status.strategy == COUNT and status.availability == CLONE:
        return list(status.clones)
    return [status.name]


def programs(status: TargetStatus) -> list[tuple]:
    """(probe kind, BPF function) pairs to attach for a planned target."""
    t = BY_NAME[status.name]
    if status.strategy == COUNT:
        return [("kprobe", t.count)]
    if status.strategy in TRAMPOLINE:
        return list(t.trampoline)
    return list(t.programs) if is_attached(status.strategy) else []


@dataclass
class Sources:
    """What this trace could see, from the header's strategy map and the target registry."""

    populate: bool  # per-PTE reuse: vmemmap_populate_address under __populate_section_memmap
    alloc: bool  # vmemmap pages allocated: an allocator under the same
    init_decoded: bool  # memmap_init_compound's nr_pages read
    init_pages: bool  # __init_zone_device_page's hits counted: struct pages initialised
    ranges: bool  # memmap_init_zone_device
    init_calls: bool = False  # memmap_init_compound's calls counted (decoded or not)
    allocators: tuple = ()  # the allocator targets attached

    @property
    def init(self) -> bool:
        """Struct pages initialised per compound page can be observed."""
        return self.init_decoded or self.init_pages

    @property
    def cross_checkable(self) -> bool:
        """The probes see the populate itself, so a page-table walk can check them."""
        return self.populate and self.alloc

    @classmethod
    def from_strategy(cls, strategy: dict[str, str]) -> "Sources":
        def sees(kind, decoded=False):
            return any(t.sees == kind and is_attached(strategy.get(t.name, ""))
                       and not (decoded and strategy[t.name] == COUNT) for t in TARGETS)

        section = sees(targets.SECTIONS)
        return cls(populate=section and sees(targets.POPULATE),
                   alloc=section and sees(targets.ALLOC),
                   init_decoded=sees(targets.INIT, decoded=True),
                   init_pages=sees(targets.INIT_PAGES),
                   ranges=sees(targets.RANGES), init_calls=sees(targets.INIT),
                   allocators=tuple(t.name for t in TARGETS if t.sees == targets.ALLOC
                                    and is_attached(strategy.get(t.name, ""))))
