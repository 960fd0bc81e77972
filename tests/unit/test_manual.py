"""The man pages and -h examples, against the click commands they describe."""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from tests.conftest import run_cli
from vmemtrace import __version__
from vmemtrace.cli import command_group
from vmemtrace.output import manual

ROOT = Path(__file__).resolve().parents[2]
GROUP = command_group()


def test_the_pages_in_man_are_what_the_commands_make():
    made = manual.all_pages(GROUP, __version__, manual.measured(ROOT))
    shipped = {p.name: p.read_text() for p in (ROOT / "man").glob("*.8")}
    assert sorted(shipped) == sorted(made), "run scripts/build-man"
    for name, text in made.items():
        assert shipped[name] == text, f"man/{name} is stale: run scripts/build-man"


def documented_options(page: str) -> set:
    """The flags of the OPTIONS section: each .TP's first line."""
    section = page.split(".SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    flags = set()
    for entry in section.split(".TP\n")[1:]:
        first = entry.splitlines()[0]
        flags |= {f.replace("\\-", "-") for f in re.findall(r"\\fB(.+?)\\fR", first)}
    return flags


@pytest.mark.parametrize("name", sorted(GROUP.commands))
def test_every_option_is_in_its_page_and_no_other(name):
    cmd = GROUP.commands[name]
    page = (ROOT / "man" / f"vmemtrace-{name}.8").read_text()
    want = {o for p in manual.options(cmd) for o in p.opts + p.secondary_opts}
    assert documented_options(page) == want
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXAMPLES", "OVERHEAD", "EXIT STATUS",
                    "FILES", "SEE ALSO"):
        assert f"\n.SH {section}\n" in page, section
    assert "\\fBndctl\\fR(1)" in page and "\\fBdaxctl\\fR(1)" in page and "\\fBbpftrace\\fR(8)" in page


def test_a_changed_option_makes_the_page_differ():
    cmd = GROUP.commands["audit"]
    before = manual.page("audit", cmd, __version__, "")
    extra = click.Option(["--new-thing"], help="x")
    cmd.params.append(extra)
    try:
        assert "\\-\\-new\\-thing" in manual.page("audit", cmd, __version__, "")
        assert manual.page("audit", cmd, __version__, "") != before
    finally:
        cmd.params.remove(extra)


@pytest.mark.parametrize("name", sorted(GROUP.commands))
def test_every_example_parses_with_its_command(name):
    """Each example is a command line click accepts (options spelled as they exist)."""
    assert manual.EXAMPLES[name]
    cmd = GROUP.commands[name]
    for line, _ in manual.EXAMPLES[name]:
        words = shlex.split(line.split("|")[0])
        assert words[:2] == ["vmemtrace", name], line
        with cmd.make_context(name, words[2:]) as ctx:
            assert ctx.params is not None


@pytest.mark.parametrize("name", sorted(GROUP.commands))
def test_every_help_ends_with_examples(name):
    res = run_cli(name, "-h")
    assert res.returncode == 0
    tail = res.stdout.split("examples:\n", 1)[1]
    assert manual.EXAMPLES[name][0][0] in tail


def test_pages_render_without_warnings(tmp_path):
    if not shutil.which("man"):
        pytest.fail("man missing (man-db: scripts/install.sh installs it)")
    for page in sorted((ROOT / "man").glob("*.8")):
        res = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                             text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
        assert res.returncode == 0 and not res.stderr.strip(), (page.name, res.stderr)
        assert "EXAMPLES" in res.stdout


def test_every_page_has_its_environment_requirements_and_trace_its_fields():
    group = command_group()
    pages = manual.all_pages(group, "0")
    for name in group.commands:
        text = pages[f"vmemtrace-{name}.8"]
        assert ".SH ENVIRONMENT" in text and "VMEMTRACE_KCORE" in text, name
        assert (".SH REQUIREMENTS" in text) == (name != "replay"), name
    assert ".SH FIELDS" in pages["vmemtrace-trace.8"]
    # the FIELDS name every event word trace prints
    words = set(re.findall(r'return \(?f?"([A-Z]+) ', (ROOT / "vmemtrace/output/render.py").read_text()))
    assert words and all(w in manual.FIELDS for w in words - {"HEADER"}), words
    # ALERTS names every alert the rules define
    alerts = re.findall(r"- alert: (\w+)", (ROOT / "dashboards/alerts.yml").read_text())
    assert alerts and all(a in manual.ALERTS for a in alerts)
