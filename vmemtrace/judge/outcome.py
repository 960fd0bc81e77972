"""A check's outcome: its name, one of four statuses, and a sentence that says why. Pure."""

from dataclasses import dataclass

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"
STATUSES = (PASS, FAIL, SKIP, ERROR)  # ERROR: the evidence itself is broken, not the kernel


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def as_json(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail}
