"""The names of the checks that define a range's case, which the command line offers to waive:
here, apart from the checks themselves (judge/checks.py), so that parsing options imports no judging."""

# An eligible range: the optimisation's promises (checks.defining_checks()).
ELIGIBLE = ("tail-reuse", "accounting", "init-skip")
# A range that must not be optimised (altmap, 4 KiB alignment, a kernel without the feature).
NOT_ELIGIBLE = ("no-false-optimisation",)
DEFINING = ELIGIBLE + NOT_ELIGIBLE
# audit sees the vmemmap after the fact: struct page initialisation is never visible to it.
AUDIT_WAIVED = ("init-skip",)
