"""The names of the checks that define a range's case, which the command line offers to waive:
here, apart from the checks themselves (judge/checks.py), so that parsing options imports no judging."""

# An eligible range: the optimisation's promises (checks.defining_checks()).
ELIGIBLE = ("tail-reuse", "accounting", "init-skip")
# A range that must not be optimised (altmap, 4 KiB alignment, a kernel without the feature).
NOT_ELIGIBLE = ("no-false-optimisation",)
# A hugepage size (judge/hvo.py): its folios as HVO lays them out (no struct page initialisation
# to see), or kept whole where it is off; and, where folios were freed, their vmemmap given back.
HVO_ELIGIBLE = ("tail-reuse", "accounting")
HVO_FREED = ("restore",)
DEFINING = ELIGIBLE + NOT_ELIGIBLE + HVO_FREED
# audit sees the vmemmap after the fact: struct page initialisation is never visible to it.
AUDIT_WAIVED = ("init-skip",)
