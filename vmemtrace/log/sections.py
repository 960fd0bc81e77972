"""One range's __populate_section_memmap() calls as the probes counted them (one "section" event
each, bpf/vmemtrace.bpf.c), summed as they come: a 1 TiB range makes 8192 calls, and what the
ledger, the account (judge/account.py) and the checks read of them is their sums, which pieces were
populated, and the keys every call of a range shares. Logged as one "sections" event per range
(log/events.py, schema 3). Pure: no I/O.
"""

from collections.abc import Iterable

# Counts summed over a range's calls (events.REQUIRED "section").
SUMMED = ("ptes", "plain", "fresh", "reused", "existing", "alloc_calls", "allocs", "direct_bytes",
          "pt_pages")
# Keys the calls of one range share: the first call's are kept.
SHARED = ("range_start_pfn", "pfns_per_compound", "has_pgmap", "struct_page_size", "page_size")
MAX_RUNS = 64  # populated pfn runs kept: a range's calls are contiguous (one run)
MAX_TASKS = 8  # distinct (pid, comm) kept
MAX_PROBLEMS = 3


def section_problem(s: dict) -> str | None:
    """Each vmemmap_populate_address call is counted once (bpf/): a call's counts add up."""
    if s["ptes"] != s["fresh"] + s["reused"] + s["existing"] or \
            s["plain"] != s["fresh"] + s["existing"] or s["allocs"] > s["alloc_calls"] \
            or s["direct_bytes"] % s["page_size"]:
        return (f"the section at pfn {s['pfn']} does not add up (ptes {s['ptes']}, fresh "
                f"{s['fresh']}, reused {s['reused']}, existing {s['existing']}, plain "
                f"{s['plain']}, allocations {s['allocs']} of {s['alloc_calls']}, "
                f"{s['direct_bytes']} bytes in blocks)")
    return None


class Sections:
    """A range's section calls, summed (module docstring). Empty: no call seen."""

    def __init__(self):
        self.count = 0
        self.totals: dict[str, int] = dict.fromkeys(SUMMED, 0)
        self.shared: dict | None = None
        self.altmap = False
        self.ok = True  # every call returned success
        self.runs: list[list[int]] = []  # [first pfn, end pfn) populated, merged where they touch
        self.tasks: list[tuple[int, str]] = []  # (pid, comm) of the calls, where logged
        # CLOCK_MONOTONIC ns of the first and last call's return, where logged: when the range
        # was populated, beside other ranges (two namespaces set up at once)
        self.ktime: list[int] | None = None
        self.problems: list[str] = []

    def add(self, s: dict) -> None:
        """One "section" event."""
        self.count += 1
        for k in SUMMED:
            self.totals[k] += s[k]
        if self.shared is None:
            self.shared = {k: s[k] for k in SHARED}
        self.altmap = self.altmap or bool(s["altmap"])
        self.ok = self.ok and bool(s["ok"])
        self._run(s["pfn"], s["pfn"] + s["nr_pages"])
        if "pid" in s and (s["pid"], s["comm"]) not in self.tasks and len(self.tasks) < MAX_TASKS:
            self.tasks.append((s["pid"], s["comm"]))
        if "ktime_ns" in s:
            self._when([s["ktime_ns"], s["ktime_ns"]])
        problem = section_problem(s)
        if problem and len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)

    def _when(self, ktime: list[int]) -> None:
        self.ktime = list(ktime) if self.ktime is None else [min(self.ktime[0], ktime[0]),
                                                             max(self.ktime[1], ktime[1])]

    def _run(self, first: int, end: int) -> None:
        if self.runs and self.runs[-1][1] == first:  # the next call of a range, as they come
            self.runs[-1][1] = end
            return
        runs = sorted(self.runs + [[first, end]])
        merged = [runs[0]]
        for lo, hi in runs[1:]:
            if lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        if len(merged) > MAX_RUNS:
            merged[MAX_RUNS - 1:] = [[merged[MAX_RUNS - 1][0], merged[-1][1]]]
            if len(self.problems) < MAX_PROBLEMS:
                self.problems.append(f"section calls in more than {MAX_RUNS} separate runs of pfns")
        self.runs = merged

    def merge(self, other: "Sections") -> None:
        """Another summary of the same range's calls (sections logged as several events)."""
        self.count += other.count
        for k in SUMMED:
            self.totals[k] += other.totals[k]
        self.shared = self.shared or other.shared
        self.altmap, self.ok = self.altmap or other.altmap, self.ok and other.ok
        for lo, hi in other.runs:
            self._run(lo, hi)
        self.tasks += [t for t in other.tasks if t not in self.tasks][:MAX_TASKS - len(self.tasks)]
        if other.ktime is not None:
            self._when(other.ktime)
        self.problems = (self.problems + other.problems)[:MAX_PROBLEMS]

    def copy(self) -> "Sections":
        out = Sections()
        out.merge(self)
        return out

    def __len__(self) -> int:
        return self.count

    @property
    def first_pfn(self) -> int | None:
        return self.runs[0][0] if self.runs else None

    @property
    def end_pfn(self) -> int:
        return self.runs[-1][1] if self.runs else 0

    def populated(self, pfn: int) -> bool:
        """Whether a call populated pfn (a piece's first pfn, boot_placement())."""
        return any(lo <= pfn < hi for lo, hi in self.runs)

    def as_event(self) -> dict:
        ev = {"type": "sections", "count": self.count, **self.totals, **(self.shared or {}),
              "altmap": self.altmap, "ok": self.ok, "runs": [list(r) for r in self.runs],
              "tasks": [list(t) for t in self.tasks], "problems": list(self.problems)}
        if self.ktime is not None:
            ev["ktime"] = list(self.ktime)
        return ev

    @classmethod
    def from_event(cls, ev: dict) -> "Sections":
        """A logged summary (log/events.py has checked its types); what no sum of calls can be is
        among its problems: an edited log."""
        self = cls()
        self.count = ev["count"]
        self.totals = {k: ev[k] for k in SUMMED}
        self.shared = {k: ev[k] for k in SHARED}
        self.altmap, self.ok = ev["altmap"], ev["ok"]
        self.problems = list(ev["problems"])[:MAX_PROBLEMS]
        for lo, hi in ev["runs"]:
            if lo >= hi:
                self.problems.append(f"an empty run of sections at pfn {lo}")
            else:
                self._run(lo, hi)
        self.tasks = [(pid, comm) for pid, comm in ev["tasks"]][:MAX_TASKS]
        if "ktime" in ev:
            if len(ev["ktime"]) != 2 or ev["ktime"][0] > ev["ktime"][1]:
                self.problems.append(f"the section calls' times {ev['ktime']} are not [first, last]")
            else:
                self.ktime = list(ev["ktime"])
        t = self.totals
        problem = section_problem(dict(t, pfn=self.first_pfn, page_size=ev["page_size"]))
        if problem or not self.count or not self.runs or len(self.runs) > MAX_RUNS:
            self.problems.append(f"the summary of {self.count} section calls does not add up"
                                 + (f": {problem}" if problem else ""))
        self.problems = self.problems[:MAX_PROBLEMS]
        return self


def summed(events: Iterable[dict]) -> Sections:
    """Section events, or summaries of them, as one summary."""
    out = Sections()
    for ev in events:
        if ev["type"] == "sections":
            out.merge(Sections.from_event(ev))
        else:
            out.add(ev)
    return out


def first_pfn(ev: dict) -> int:
    """Where a "section" or "sections" event starts: which range it belongs to."""
    if ev["type"] == "sections":
        return ev["runs"][0][0] if ev["runs"] else ev["range_start_pfn"]
    return ev["pfn"]
