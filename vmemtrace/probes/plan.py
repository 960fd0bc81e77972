"""The attach plan: per target, whether this kernel lets us probe it, and how we will see it.

Availability is read from the kernel (kernel/kallsyms.py, kernel/ftrace.py), never assumed
from the version alone.
"""

from dataclasses import dataclass
from typing import List, Optional, Set

from vmemtrace.kernel.kallsyms import Kallsyms
from vmemtrace.probes.targets import TARGETS, WALK, Target

TRACEABLE = "traceable"
NOTRACE = "notrace"
BLACKLISTED = "blacklisted"
CLONE = "clone"
INLINED = "inlined"
ABSENT = "absent"
UNKNOWN = "unknown"

# Strategies under which the target's own probes are attached (the rest: fallback, walk,
# unavailable).
ATTACHED = ("kprobe", "kretprobe", "kprobe+kretprobe")
WALK_STRATEGY = "walk"  # read the page tables after the fact (kernel/kcore.py)


def is_attached(strategy: str) -> bool:
    return strategy in ATTACHED


@dataclass
class TargetStatus:
    name: str
    availability: str  # one of the constants above
    strategy: str  # kprobe, kretprobe, kprobe+kretprobe, fallback, walk, unavailable
    reason: str
    clones: List[str]

    def as_json(self) -> dict:
        return {"availability": self.availability, "strategy": self.strategy,
                "reason": self.reason, "clones": self.clones}


def classify(target: Target, version: tuple, syms: Kallsyms,
             filter_functions: Optional[Set[str]], blacklist: Optional[Set[str]]):
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


def build_plan(version: tuple, syms: Kallsyms, filter_functions: Optional[Set[str]],
               blacklist: Optional[Set[str]], kprobes: bool,
               walk_blocker: Optional[str] = "not asked") -> List[TargetStatus]:
    """One TargetStatus per target, in TARGETS order.

    A target that cannot be probed names its fallback when the fallback itself is probeable,
    or "walk" when the page-table walk can read its result (walk_blocker None); otherwise it is
    "unavailable": we never pretend to see what we cannot.
    """
    raw = {t.name: classify(t, version, syms, filter_functions, blacklist) for t in TARGETS}
    plan = []
    for t in TARGETS:
        availability, reason = raw[t.name]
        if availability == TRACEABLE and kprobes:
            strategy = t.attach
        elif availability == TRACEABLE:
            strategy = "unavailable"
            reason = "traceable, but this kernel has no kprobes (CONFIG_KPROBES)"
        elif t.fallback in raw and raw[t.fallback][0] == TRACEABLE and kprobes:
            strategy = "fallback"
            reason = f"{reason}; seen through {t.fallback}"
        elif t.fallback == WALK and walk_blocker is None:
            strategy = WALK_STRATEGY
            reason = f"{reason}; its result read from the vmemmap page tables after each range"
        elif t.fallback == WALK:
            strategy = "unavailable"
            reason = f"{reason}; no page-table walk either: {walk_blocker}"
        else:
            strategy = "unavailable"
        plan.append(TargetStatus(t.name, availability, strategy, reason, syms.clones_of(t.name)))
    return plan
