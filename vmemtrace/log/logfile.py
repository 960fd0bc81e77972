"""The event log as a file: written as events come under a temporary name and sealed (a count
and hash of every line) before it takes its name; read back one validated event at a time,
whole only when its seal says so. What each event holds is log/events.py."""

import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from typing import IO

from vmemtrace.errors import VmemtraceError, stops_held, terminate_on_sigterm
from vmemtrace.log.events import INDEXED, MAX_LINE, READABLE, validate
from vmemtrace.log.rows import COLUMNS


class Seal:
    """What a seal vouches for, kept as lines go by: their number, types and digest."""

    def __init__(self):
        self.lines, self.counts, self.hash = 0, {}, hashlib.sha256()

    def add(self, line: str, kind: str | None) -> None:
        self.lines += 1
        self.hash.update(line.encode())
        if kind is not None:
            self.counts[kind] = self.counts.get(kind, 0) + 1

    def event(self) -> dict:
        return {"type": "seal", "lines": self.lines, "counts": dict(sorted(self.counts.items())),
                "sha256": self.hash.hexdigest()}

    def disagreement(self, seal: dict) -> str | None:
        """How a log's seal disagrees with the lines before it, or None."""
        mine = self.event()
        for key in ("lines", "counts", "sha256"):
            if seal[key] != mine[key]:
                return (f"its seal says {key} {json.dumps(seal[key])[:80]}, the lines before it "
                        f"have {json.dumps(mine[key])[:80]}")
        return None


class LogFile:
    """An event log written as events come, to a hidden temporary name beside `path`, opened
    before tracing starts so that a path that cannot be written fails first. Mode 0600: logs
    hold physical addresses. seal() ends it with a seal and renames it to `path`; a log that is
    not sealed (the trace failed, or a signal ended it) is removed by abort(), so a file at
    `path` is always whole. Only a process killed outright leaves the temporary file."""

    def __init__(self, path: str):
        self.path, self.count, self.seal_of = path, 0, Seal()
        head, tail = os.path.split(path)
        self.tmp = os.path.join(head, f".{tail}.{os.getpid()}.partial")
        if os.path.isdir(path):
            raise VmemtraceError(f"cannot write {path}: Is a directory")
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            raise VmemtraceError(f"cannot write {path}: {e.strerror}") from None
        try:
            self.fh = os.fdopen(fd, "w")
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise

    def write(self, event: dict) -> None:
        line = json.dumps(event, sort_keys=True) + "\n"
        try:
            self.fh.write(line)
            if self.count == 0 or event["type"] in ("range", "command", "lost"):
                self.fh.flush()  # the header at once: a full disk fails before the command runs
        except OSError as e:
            raise VmemtraceError(f"cannot write {self.path}: {e.strerror}") from None
        self.seal_of.add(line, event["type"])
        self.count += 1

    def seal(self) -> None:
        """The seal, written last and made durable before the log takes its name."""
        try:
            self.fh.write(json.dumps(self.seal_of.event(), sort_keys=True) + "\n")
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise VmemtraceError(f"cannot write {self.path}: {e.strerror}") from None

    def abort(self) -> None:
        """The unsealed log removed: nothing at `path` claims to be whole."""
        try:
            self.fh.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def write(events: Iterable[dict], fh: IO[str]) -> None:
    for ev in events:
        fh.write(json.dumps(ev, sort_keys=True) + "\n")
    fh.flush()


def _lines(fh: IO[str], name: str) -> Iterator[tuple[int, str]]:
    """(line number, line), each read with a length cap: /dev/zero is not a log."""
    lineno = 0
    while True:
        line = fh.readline(MAX_LINE + 1)
        if not line:
            return
        lineno += 1
        if len(line) > MAX_LINE:
            raise VmemtraceError(f"{name}:{lineno}: a line longer than {MAX_LINE} characters: "
                                 "not an event log")
        yield lineno, line


def indexed(event: dict) -> bool:
    """Whether a compound event, or each row of a compounds summary, records out_of_order (any
    other event: True)."""
    if event["type"] == "compound":
        return "out_of_order" in event
    if event["type"] == "compounds":
        return all(len(r) == len(COLUMNS) + 1 for r in event["classes"]) and \
            all(len(r) == len(COLUMNS) for r in event["kept"])
    return True


UNSEALED = ("the log has no seal: it may have been cut or edited after it was written "
            "(replay --trust-unsealed judges it as whole)")
UNINDEXED = ("the log was recorded before compound pages recorded their vmemmap indices "
             f"(schema < {INDEXED}): an index populated twice beside one skipped would not show "
             "(replay --trust-unsealed judges it as whole)")


class Sealed:
    """Whether the log stream() read proves itself whole, known once it has been read to its
    end: sealed, and of a schema whose compound pages prove their indices; `why` says what it
    lacks."""

    def __init__(self):
        self.sealed = False
        self.why: str | None = UNSEALED


def stream(fh: IO[str], name: str, sealed: Sealed | None = None) -> Iterator[dict]:
    """The events of a log one at a time, validated: each line one well-typed event, the header
    first and only there, and the closing events present (a log cut at a line boundary is
    truncated too; that is only known at its end, where the stream raises). A seal, where there
    is one, must be the last line and agree with every line before it; whether there was one is
    left in `sealed`. Errors name the file and line, and are exit 2: a bad log says nothing
    about the kernel. Nothing is kept: replay folds a log of any size in the memory its ranges
    need (ledger.Fold)."""
    header, closed, seal, seen = None, False, None, Seal()
    for lineno, line in _lines(fh, name):
        if seal is not None:
            raise VmemtraceError(f"{name}:{lineno}: a line after the seal (line {seal}): "
                                 "the log was added to after it was written")
        if not line.strip():
            seen.add(line, None)
            continue
        if not line.endswith("\n"):
            raise VmemtraceError(f"{name}:{lineno}: truncated line (the recording was cut off)")
        try:
            event = json.loads(line)
        except RecursionError:
            raise VmemtraceError(f"{name}:{lineno}: nested too deeply to be an event") from None
        except ValueError as e:
            raise VmemtraceError(f"{name}:{lineno}: not JSON ({getattr(e, 'msg', str(e))[:80]})") from None
        validate(event, f"{name}:{lineno}")
        if event["type"] == "seal":
            wrong = seen.disagreement(event)
            if wrong:
                raise VmemtraceError(f"{name}:{lineno}: the log is not as it was written: {wrong}")
            seal = lineno
            continue
        seen.add(line, event["type"])
        if header is None:
            if event["type"] != "header":
                raise VmemtraceError(f"{name}:{lineno}: the first event must be the header")
            if event["schema"] not in READABLE:
                raise VmemtraceError(f"{name}:{lineno}: schema {event['schema']} is not one of "
                                     f"{', '.join(map(str, READABLE))} (recorded by another "
                                     "vmemtrace version)")
            header = event
        elif event["type"] == "header":
            raise VmemtraceError(f"{name}:{lineno}: a second header (two logs joined?)")
        elif header["schema"] >= INDEXED and not indexed(event):
            raise VmemtraceError(f"{name}:{lineno}: a compound page without out_of_order in a "
                                 f"schema-{header['schema']} log")
        closed = closed or event["type"] == "lost"
        yield event
    if header is None:
        raise VmemtraceError(f"{name}: empty event log")
    # A trace closes with the BPF side's account (lost, hits); an audit has no BPF side.
    if header.get("walk") != "audit" and not closed:
        raise VmemtraceError(f"{name}: truncated: the closing events (lost, hits) are missing "
                             "(the recording was cut off)")
    if sealed is not None:
        sealed.sealed = seal is not None
        sealed.why = (UNSEALED if seal is None
                      else UNINDEXED if header["schema"] < INDEXED else None)


def read(fh: IO[str], name: str) -> list[dict]:
    """All events of a log, validated as stream() validates them."""
    return list(stream(fh, name))


def iter_file(path: str, sealed: Sealed | None = None) -> Iterator[dict]:
    """The events of the log at `path`, streamed (stream()); file errors are exit 2 too. Only
    a regular file: a FIFO with no writer, a terminal or a device would block or never end."""
    if path == "-":
        raise VmemtraceError("-: an event log is read from a file `record` wrote, not from "
                             "standard input")
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise VmemtraceError(f"{path}: not a regular file: an event log is a file "
                                 "`record` wrote")
        with open(path) as fh:
            yield from stream(fh, path, sealed)
    except OSError as e:
        raise VmemtraceError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise VmemtraceError(f"{path}: not a text file") from None


@contextlib.contextmanager
def recording(path):
    """The event log at `path` (None: no log), written as events come; yields the callback.
    Sealed and given its name when the block ends normally; removed when anything ends it
    early (an error, Ctrl-C, SIGTERM), so that no file at `path` is ever a cut log."""
    if path is None:
        yield None
        return
    with terminate_on_sigterm():
        log = None
        try:
            with stops_held():  # the file's creation and its owner's name are one step
                log = LogFile(str(path))
            yield log.write
        except BaseException:
            if log is not None:
                with stops_held():
                    log.abort()
            raise
        with stops_held():  # the seal and the rename are one step
            log.seal()
