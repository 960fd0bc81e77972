"""The `vmemtrace` command line (click). Words and JSON keys are fixed by design.md."""

import functools
import sys
from pathlib import Path

import click

from vmemtrace import __version__, render
from vmemtrace.errors import EXIT_CANNOT, VmemtraceError


def one_line_errors(fn):
    """Every expected failure leaves as one line on stderr and its exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VmemtraceError as e:
            click.echo(f"vmemtrace: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("vmemtrace: interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmemtrace")
def cli():
    """Watch Linux build the vmemmap of device-dax memory and verify the compound-devmap
    optimisation (tail vmemmap page reuse, struct page init skipping)."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("/"), hidden=True, help="read kernel files below this root (tests)")
@one_line_errors
def check(as_json, root):
    """What this kernel offers: config, BTF, headers, each probe target and its strategy.

    Exit 0 when tracing can start, 2 (with the reason) when it cannot."""
    from vmemtrace.kernel.facts import gather
    from vmemtrace.readiness import assess, check_report

    facts = gather(root)
    ready = assess(facts)
    report = check_report(facts, ready)
    if as_json:
        render.emit_json(report)
    else:
        click.echo(render.check_table(report))
    if not ready.can_trace:
        raise VmemtraceError("cannot trace: " + "; ".join(ready.blockers), EXIT_CANNOT)


def main():
    from vmemtrace.lab.cli import lab

    cli.add_command(lab)
    cli(prog_name="vmemtrace")
