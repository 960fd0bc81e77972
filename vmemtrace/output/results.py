"""Where a verdict goes: the table or JSON document, the --junit and --ktap files, the error
document when there is no verdict, and the exit code with the first reason."""

import contextlib
import dataclasses
from pathlib import Path

import click

from vmemtrace.errors import EXIT_CANNOT, VmemtraceError, say
from vmemtrace.output import render


@dataclasses.dataclass(frozen=True)
class Reports:
    """The result files a verdict command writes besides its output (--junit, --ktap)."""

    junit: Path | None = None
    ktap: Path | None = None

    def __bool__(self) -> bool:
        return self.junit is not None or self.ktap is not None

    def write(self, doc: dict) -> None:
        """Each file asked for; the first that cannot be written raises."""
        from vmemtrace.output.junit import junit_xml
        from vmemtrace.output.ktap import ktap

        for path, render_as in ((self.junit, junit_xml), (self.ktap, lambda d: ktap(d).encode())):
            if path is None:
                continue
            try:
                path.write_bytes(render_as(doc))
            except OSError as e:
                raise VmemtraceError(f"cannot write {path}: {e.strerror}") from None


@contextlib.contextmanager
def error_document(as_json: bool, reports: Reports, expect: str, kernel=None):
    """When the run cannot produce a verdict (not root, no kcore, a corrupt log, a trace that
    never started), CI still gets a machine-readable reason: the verify document with verdict
    "error" and the problem, and JUnit and KTAP files saying so. Then the one line and exit 2,
    as always."""
    try:
        yield
    except VmemtraceError as e:
        if e.exit_code == EXIT_CANNOT and (as_json or reports):
            doc = {"kernel": kernel, "verdict": "error", "strategy": {}, "expect": expect,
                   "devices": [], "events_lost": 0, "waived": [], "problems": [str(e)]}
            if as_json:
                render.emit_json(doc)
            try:
                reports.write(doc)
            except VmemtraceError as unwritable:
                say(str(unwritable))  # the run's own reason stays the last line
        raise


def output_verdict(doc: dict, as_json: bool, reports: Reports) -> None:
    """The result files first: where one cannot be written the printed document says "error"
    with the reason, never the verdict a CI would then not find in its file."""
    unwritten = None
    try:
        reports.write(doc)
    except VmemtraceError as e:
        unwritten = e
        doc = {**doc, "verdict": "error", "problems": doc.get("problems", []) + [str(e)]}
    if as_json:
        render.emit_json(doc)
    else:
        click.echo(render.verify_table(doc))
    if unwritten is not None:
        raise unwritten


def finish(doc: dict) -> None:
    """Exit as the verdict says: 0 for pass, else its code and the first reason in one line."""
    from vmemtrace.judge.verdict import EXIT

    code = EXIT[doc["verdict"]]
    if code:
        reasons = doc.get("problems") or [doc[k] for k in ("unjudged_log",) if k in doc] or [
            f"{d['device']} {c['name']}: {c['detail']}"
            for d in doc["devices"] for c in d["checks"] if c["status"] in ("fail", "error")] or [
            f"{d['device']}: {c['name']} not judged ({c['detail']}); waive it with "
            f"--allow-skip {c['name']} if that is enough for you"
            for d in doc["devices"] for c in d["checks"] if c["name"] in d.get("unjudged", ())]
        raise VmemtraceError(f"{doc['verdict']}: {reasons[0] if reasons else 'see above'}", code)
