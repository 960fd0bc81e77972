"""The `vmemtrace` command line (click). Words and JSON keys are fixed (docs/design.md)."""

import functools
import math
import os
import sys
from pathlib import Path

import click

from vmemtrace import __version__
from vmemtrace.errors import (
    EXIT_USAGE,
    VmemtraceError,
    exit_document,
    interrupted,
    one_line_errors,
    printable,
    say,
)
from vmemtrace.judge import check_names
from vmemtrace.output import render, results


def _compile_early(cmd=()) -> None:
    """Tracing commands start the BPF compile first thing: it runs in its own thread while the
    rest of vmemtrace is imported and the kernel's facts are read (probes/program.py). A command
    to run must exist first, and be set apart by "--" (else `verify ndctl list --json` gives the
    command's --json to vmemtrace): fail before the compile, not after it."""
    import shutil

    if cmd and "--" not in sys.argv[1:]:
        raise VmemtraceError(f"put -- before the command to run: vmemtrace "
                             f"{click.get_current_context().info_name} [OPTIONS] -- {' '.join(cmd)}")
    if cmd and shutil.which(cmd[0]) is None:
        raise VmemtraceError(f"cannot run {cmd[0]}: No such file or directory")
    from vmemtrace.probes.program import start_compile

    start_compile(say)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmemtrace")
def cli():
    """Watch Linux build the vmemmap of device-dax memory and verify the compound-devmap
    optimisation (tail vmemmap page reuse, struct page init skipping)."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("/"), hidden=True, help="read kernel files below this root (tests)")
@click.option("--timing", is_flag=True,
              help="also start tracing as verify does, detach at once, and say where the "
                   "start-up went (interpreter, BTF, compile, kernel facts, attach)")
@one_line_errors
def check(as_json, root, timing):
    """What this kernel offers: config, BTF, headers, each probe target and its strategy.

    Exit 0 when tracing can start, 2 (with the reason) when it cannot."""
    from vmemtrace.kernel import btf
    from vmemtrace.probes.program import BPF_SOURCE, defines, kaddrs_sources
    from vmemtrace.probes.readiness import Blocker, assess, cannot_trace, check_report, read_facts
    from vmemtrace.probes.targets import FUNCTIONS

    startup = _timed_startup(root) if timing else None
    facts = read_facts(root)
    ready = assess(facts)
    report = check_report(facts, ready)
    report["bpf_program"] = str(BPF_SOURCE)  # package data: what an installed copy compiles
    if not BPF_SOURCE.is_file():
        ready.blockers.append(Blocker("no_bpf_program", f"the BPF program {BPF_SOURCE} is not "
                                                        "installed"))
        report["can_trace"] = False
    # Where the BPF program's struct layout and calling conventions would come from.
    layout = btf.try_layout(facts.btf and str(root / facts.btf.lstrip("/")), say,
                            "the kernel headers answer instead", FUNCTIONS)
    report["facts_from"] = {**defines(facts.version, root / "lib/modules" / facts.release / "build",
                                      layout)[1], **kaddrs_sources(facts.syms.addresses)}
    if startup is not None:
        report["timing"] = startup
    if as_json:
        render.emit_json(report)
    else:
        click.echo(render.check_table(report))
    if not ready.can_trace:
        raise cannot_trace(ready.blockers)


def _timed_startup(root: Path) -> list[dict]:
    """Start tracing as verify does (the compile first, the kernel's facts beside it, then the
    attach), detach at once, and say where each second went: the spans of probes/startup.py."""
    from vmemtrace.probes.startup import STARTUP
    from vmemtrace.session import open_tracer

    if root != Path("/"):
        raise VmemtraceError("--timing starts tracing on the running kernel: not with --root")
    _compile_early()
    tracer, walker, *_ = open_tracer(say)
    try:
        STARTUP.since_start("total: start to attached")
    finally:
        tracer.close()
        if walker is not None:
            walker.close()
    return STARTUP.rows()


def _reports(fn):
    """--junit and --ktap, handed to the command as one `reports`."""
    @functools.wraps(fn)
    def wrapper(*args, junit, ktap, **kwargs):
        return fn(*args, reports=results.Reports(junit, ktap), **kwargs)

    wrapper = click.option("--ktap", type=click.Path(dir_okay=False, path_type=Path),
                           help="also write KTAP v1 here (kernel CI: kselftest, KernelCI, "
                                "LKFT)")(wrapper)
    return click.option("--junit", type=click.Path(dir_okay=False, path_type=Path),
                        help="also write JUnit XML here")(wrapper)


EXPECT = click.option("--expect", type=click.Choice(["auto", "optimized", "unoptimized"]),
                      default="auto", show_default=True,
                      help="auto: what this kernel and device should do")
REPORTS = _reports
JSON = click.option("--json", "as_json", is_flag=True, help="machine-readable output")
ALLOW_SKIP = click.option("--allow-skip", "allow_skip", multiple=True,
                          type=click.Choice(check_names.DEFINING),
                          metavar="CHECK", help="pass although this defining check could not be "
                                                "judged (repeatable); without it such a run is "
                                                "'incomplete', exit 2")
ATTACH = click.option("--attach", type=click.Choice(("auto", "kprobe")), default="auto",
                      show_default=True,
                      help="auto: by BPF trampoline where the kernel has them, else kprobes; "
                           "kprobe: by kprobes everywhere")
NO_PROBE = click.option("--no-probe", "no_probe", multiple=True, metavar="FUNCTION",
                        help="leave this probe target unattached (repeatable; see `check`): for "
                             "a probe that misbehaves on your kernel")
DEVICE = click.option("-d", "--device", "only", multiple=True, metavar="DEVICE",
                      help="only this dax device, by chardev (dax0.0) or namespace "
                           "(namespace0.0), as `daxctl list` names them (repeatable)")


@cli.command()
@EXPECT
@JSON
@REPORTS
@ALLOW_SKIP
@NO_PROBE
@ATTACH
@click.option("--record", "record_to", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the event log here (as `record -o` does)")
@click.option("--cross-check", is_flag=True,
              help="also walk each range's page tables and fail if they disagree with the probes")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@one_line_errors
def verify(expect, as_json, reports, allow_skip, no_probe, attach, record_to, cross_check, cmd):
    """Run CMD (no shell) under tracing and judge what the kernel did.

    Where the populate functions are notrace, each range's vmemmap page tables are walked once
    memmap_init_zone_device returns. HugeTLB pages CMD allocates or frees are judged by the
    walk of their vmemmap afterwards (HVO). Exit 0 pass, 1 fail, 2 could not verify."""
    from vmemtrace.judge.verdict import evaluate

    with results.error_document(as_json, reports, expect, os.uname().release):
        _known_targets(no_probe)
        _compile_early(cmd)
        from vmemtrace.log.logfile import recording
        from vmemtrace.session import trace_command

        with recording(record_to) as on_event:
            folded = trace_command(list(cmd), say, on_event=on_event, quiet_stdout=as_json,
                                   cross_check=cross_check, exclude=no_probe, attach=attach)
        doc = evaluate(folded.ledger(), expect, allow_skip)
    results.output_verdict(doc, as_json, reports)
    results.finish(doc)


def _known_targets(names) -> None:
    from vmemtrace.probes.targets import BY_NAME

    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise VmemtraceError(f"--no-probe {unknown[0]}: not a probe target "
                             f"(one of {', '.join(BY_NAME)})")


@cli.command()
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="event log to write (JSON Lines)")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@one_line_errors
def record(output, cmd):
    """Run CMD (no shell) under tracing and write every event to FILE, for `replay`."""
    _compile_early(cmd)
    from vmemtrace.log.logfile import recording
    from vmemtrace.session import trace_command

    with recording(output) as on_event:  # fails before tracing when FILE cannot be written
        folded = trace_command(list(cmd), say, on_event=on_event)
    say(f"recorded {folded.count} events ({folded.ranges} ranges) to {output}")


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@EXPECT
@JSON
@REPORTS
@ALLOW_SKIP
@DEVICE
@click.option("--trust-unsealed", is_flag=True,
              help="judge a log that cannot prove itself whole (no seal: written before logs "
                   "were sealed, or cut; or recorded before compound pages recorded their "
                   "indices) as if it were whole: a cut or edited log may then pass")
@one_line_errors
def replay(file, expect, as_json, reports, allow_skip, only, trust_unsealed):
    """Read an event log written by `record` back through the ledger and the verdict.

    A log is whole when its seal, written last, agrees with every line before it and its
    compound pages record their indices; another passes at most as incomplete unless
    --trust-unsealed."""
    from vmemtrace.judge.ledger import fold
    from vmemtrace.judge.verdict import evaluate, unsealed
    from vmemtrace.log import logfile

    with results.error_document(as_json, reports, expect):
        sealed = logfile.Sealed()
        led = fold(logfile.iter_file(file, sealed))  # streamed: a log of any size
        waived = tuple(allow_skip) + (check_names.AUDIT_WAIVED if led.header.get("walk") == "audit" else ())
        doc = evaluate(led, expect, waived, only)
        if sealed.why is not None and not trust_unsealed:
            doc = unsealed(doc, sealed.why)
    results.output_verdict(doc, as_json, reports)
    results.finish(doc)


@cli.command()
@EXPECT
@JSON
@REPORTS
@ALLOW_SKIP
@click.option("--record", "record_to", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the walk's events here (replay reads them)")
@DEVICE
@one_line_errors
def audit(expect, as_json, reports, allow_skip, record_to, only):
    """Verify the dax devices and hugetlb pages that already exist, by walking their vmemmap
    page tables through /proc/kcore. init-skip needs the act itself: it is skipped, and waived.

    Exit 0 pass, 1 fail, 2 could not verify (or no dax device)."""
    from vmemtrace.judge.ledger import fold
    from vmemtrace.judge.verdict import evaluate
    from vmemtrace.log.logfile import recording
    from vmemtrace.walk.audit import audit_log

    with results.error_document(as_json, reports, expect, os.uname().release):
        with recording(record_to) as write:
            def logged(log):  # folded as it is walked, and written as it passes
                for ev in log:
                    if write is not None:
                        write(ev)
                    yield ev

            doc = evaluate(fold(logged(audit_log(say, only))), expect,
                           tuple(allow_skip) + check_names.AUDIT_WAIVED, only)
    results.output_verdict(doc, as_json, reports)
    results.finish(doc)


@cli.command()
@click.option("--listen", default="127.0.0.1:9477", show_default=True, metavar="HOST:PORT",
              help="where to serve /metrics; other addresses are your explicit choice")
@click.option("--textfile", metavar="PATH.prom",
              help="instead of serving: keep this node_exporter textfile up to date")
@click.option("--interval", default=15.0, show_default=True, help="textfile refresh, seconds")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="serve HTTPS with this certificate")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="... and this key")
@DEVICE
@one_line_errors
def exporter(listen, textfile, interval, tls_cert, tls_key, only):
    """Prometheus metrics of every dax device: those that exist at start (page-table walk) and
    those created later (traced). Runs until SIGTERM or Ctrl-C, then detaches everything."""
    from vmemtrace.output.exporter import run

    if not (math.isfinite(interval) and interval > 0):
        raise VmemtraceError(f"--interval {interval}: must be a positive number of seconds")
    run(listen, textfile, interval, tls_cert, tls_key, say, only)


@cli.command()
@click.option("--duration", type=float, help="stop after this many seconds")
@click.option("-T", "--wall-clock", "wall", is_flag=True,
              help="print wall-clock times (HH:MM:SS.us), not seconds since the first event")
@JSON
@one_line_errors
def trace(duration, wall, as_json):
    """Print events as the kernel produces them, one line each, until Ctrl-C: when, the pid
    and comm of the task that built the vmemmap, and what it built."""
    import time as _time

    _compile_early()
    from vmemtrace.session import watch

    first = []

    def show(ev):
        if as_json:
            return click.echo(render.json_line(ev))
        # Kernel events carry bpf_ktime_get_ns() (CLOCK_MONOTONIC); what vmemtrace itself read
        # (walks, devices) is stamped as it is shown.
        ns = ev.get("ktime_ns") or _time.monotonic_ns()
        if not first:
            first.append(ns)
            click.echo(render.TRACE_HEADER)
        if wall:
            t = _time.time() - (_time.monotonic_ns() - ns) / 1e9
            when = _time.strftime("%H:%M:%S", _time.localtime(t)) + f".{int(t % 1 * 1e6):06d}"
        else:
            when = f"{(ns - first[0]) / 1e9:.6f}"
        click.echo(render.event_line(ev, when))

    watch(duration, say, show)


@cli.command()
@click.argument("interval", type=float, default=1.0)
@click.argument("count", type=int, required=False)
@click.option("--cumulative", is_flag=True,
              help="every device seen so far at each interval, not only those that changed")
@DEVICE
@JSON
@one_line_errors
def stats(interval, count, cumulative, only, as_json):
    """Per-device ledger tables every INTERVAL seconds, COUNT times (bcc style): by default
    only the devices whose ledger changed in that interval, as bcc tools clear their tables."""
    import time as _time

    from vmemtrace.judge.ledger import fold
    from vmemtrace.judge.verdict import changed_since, evaluate
    from vmemtrace.session import watch

    if not (math.isfinite(interval) and interval > 0):
        raise VmemtraceError(f"INTERVAL {interval}: must be a positive number of seconds")
    _compile_early()
    log = []
    state = {"next": None, "printed": 0, "before": None}

    def tick():
        if state["next"] is None:  # intervals count from the moment the probes are attached
            state["next"] = _time.monotonic() + interval
        if _time.monotonic() < state["next"]:
            return True
        state["next"] += interval
        state["printed"] += 1
        full = evaluate(fold(log), "auto", only=only)
        doc = full if cumulative else changed_since(full, state["before"])
        state["before"] = full
        if as_json:
            click.echo(render.json_line(doc))
        else:
            click.echo(f"\n{_time.strftime('%H:%M:%S')}")
            click.echo(render.verify_table(doc) if doc["devices"] else
                       "no change in this interval" if full["devices"] else "no device ranges yet")
        return count is None or state["printed"] < count

    watch(None, say, log.append, tick)


def command_group() -> click.Group:
    """Every command, each with its examples (vmemtrace/output/manual.py) under its -h."""
    from vmemtrace.lab.cli import lab
    from vmemtrace.output import manual

    cli.add_command(lab)
    for name, cmd in cli.commands.items():
        cmd.epilog = manual.epilog(name)
    return cli


def main():
    command_group()
    # Not click's standalone mode: it turns a Ctrl-C during argument parsing into "Aborted!"
    # and exit 1, the code that means "the kernel failed".
    try:
        code = cli.main(prog_name="vmemtrace", standalone_mode=False)
    except click.exceptions.Abort:
        interrupted()
    except click.UsageError as e:
        # A usage error is not "could not verify" (2): its own code, as sysexits' EX_USAGE;
        # with --json still a document, as every other exit has one.
        exit_document(EXIT_USAGE, usage_error=printable(e.format_message()))
        e.show()
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
