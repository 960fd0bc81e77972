"""The manual: each command's examples (shown by `-h` and in its man page) and the man pages
themselves, made from the click commands so that an option cannot exist in one and not the
other (tests/unit/test_manual.py). `scripts/build-man` writes them to man/.

Pure text: the commands and the benchmark's numbers are handed in, nothing here reads the kernel.
"""

import json
from pathlib import Path

import click

# (command line, what it does): one source for `-h` and the man pages.
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "check": [("vmemtrace check", "what this kernel offers and how each target is probed"),
              ("vmemtrace check --json | jq .can_trace", "for a script: can tracing start?")],
    "verify": [("vmemtrace verify -- ndctl create-namespace -m devdax -a 2M",
                "trace the creation of a namespace and judge it (exit 0 pass, 1 fail)"),
               ("vmemtrace verify --expect optimized --junit out.xml --json -- "
                "ndctl create-namespace -m devdax -a 1G",
                "in CI: fail unless this kernel optimises, with JUnit and JSON"),
               ("vmemtrace verify --cross-check --record run.jsonl -- daxctl reconfigure-device "
                "-m devdax dax0.0",
                "also walk the page tables, and keep the event log")],
    "record": [("vmemtrace record -o run.jsonl -- ndctl create-namespace -m devdax",
                "write the event log only; judge it later with replay")],
    "replay": [("vmemtrace replay run.jsonl", "judge a recorded log again"),
               ("vmemtrace replay run.jsonl --expect optimized -d namespace0.0 --json",
                "one device of it, by its ndctl name")],
    "audit": [("vmemtrace audit", "judge every dax device that exists, from its page tables"),
              ("vmemtrace audit -d dax0.0 --json", "one device, by its daxctl chardev")],
    "exporter": [("vmemtrace exporter", "serve http://127.0.0.1:9477/metrics"),
                 ("vmemtrace exporter --listen :9477 --tls-cert c.pem --tls-key k.pem",
                  "all addresses, over HTTPS"),
                 ("vmemtrace exporter --textfile /var/lib/node_exporter/vmemtrace.prom",
                  "keep a node_exporter textfile instead of serving")],
    "trace": [("vmemtrace trace", "one line per event until Ctrl-C"),
              ("vmemtrace trace -T --duration 60 --json", "wall-clock times, for a minute, as JSON lines")],
    "stats": [("vmemtrace stats 5", "every 5 s, the devices whose ledger changed"),
              ("vmemtrace stats --cumulative -d dax0.0 1 10", "one device's running totals, 10 times"),
              ("vmemtrace stats -d hugetlb-2048kB 5", "2 MiB hugetlb pages, judged at each change")],
    "lab": [("vmemtrace lab", "boot Debian's 6.12 in qemu and verify the four cases"),
            ("vmemtrace lab --kernel 5.10,6.1,6.12,7.3 --json", "every kernel of the lab"),
            ("vmemtrace lab --kernel 6.12 --shell", "a shell in the guest, pmem attached")],
}

EXIT_STATUS = {
    "verdict": "0 every device passed; 1 a check failed: the kernel did not do what it should; "
               "2 could not verify (not root, no BTF or headers, probe not attachable, no device, "
               "incomplete or corrupt evidence), with the reason on stderr and, with --json or "
               "--junit, a document whose verdict is \"error\" or \"incomplete\"; 130 interrupted.",
    "check": "0 tracing can start; 2 it cannot, with the reason.",
    "run": "0 stopped by Ctrl-C or SIGTERM with everything detached; 2 could not start "
           "(bad configuration, or tracing impossible), with the reason.",
    "exporter": "0 stopped by SIGTERM or Ctrl-C with everything detached; 2 bad configuration "
                "(address, port in use, TLS files, textfile path), which systemd does not "
                "restart. A host that cannot trace is not an exit: the exporter serves the "
                "audit and vmemtrace_tracing 0 with the reason.",
    "lab": "0 every case in every guest passed; 1 one failed; 2 the lab could not run.",
}
# Every command: a wrong command line is its own exit, never taken for a verdict.
USAGE = (" 64 usage error (an unknown option, a bad value, a missing argument), with --json "
         "a document saying so.")
EXIT_STATUS = {k: v + USAGE for k, v in EXIT_STATUS.items()}
EXIT_OF = {"check": "check", "verify": "verdict", "replay": "verdict", "audit": "verdict",
           "record": "run", "trace": "run", "stats": "run", "exporter": "exporter", "lab": "lab"}

# The benchmark's last run (bench/bench.py --json), relative to the project's root: OVERHEAD
# quotes its summary, so the pages say what was measured, not what once was.
BENCH_RESULTS = "docs/bench.json"
OVERHEAD_HOW = (
    "Tracing costs a probe hit per vmemmap PTE populated and per struct page initialised where "
    "the probes see them; where the populate functions cannot be probed, the page tables are "
    "walked once instead. audit and replay attach nothing.")


def measured(root: Path) -> list[dict]:
    """The summary of the benchmark's last run in the project at root ([] where none is)."""
    path = root / BENCH_RESULTS
    return json.loads(path.read_text())["summary"] if path.exists() else []


def overhead_text(summary: list[dict]) -> str:
    """OVERHEAD: how tracing costs, then each kernel's measured ratios and start-up."""
    if not summary:
        return OVERHEAD_HOW + " Not measured yet: bench/bench.py measures it."
    runs = []
    for k in summary:
        parts = [f"ndctl create-namespace {case} took {o['ratio']:.2f} [{o['interval'][0]:.2f}, "
                 f"{o['interval'][1]:.2f}] times as long traced as untraced ({o['runs']} runs "
                 f"each, {o['hits']} probe hits)" for case, o in k["overhead"].items()]
        if k.get("startup"):
            parts.append(f"start-up to attached took {k['startup']['seconds']:.1f} s, against "
                         f"{k['startup']['minimal_bcc_seconds']:.1f} s for a minimal BCC program")
        runs.append(f"on {k['kernel']}, " + "; ".join(parts))
    return (OVERHEAD_HOW + " Measured by bench/bench.py in qemu TCG guests (3 GiB namespaces; "
            "traced and untraced runs alternating in one guest; the ratio of medians and its 95% "
            "bootstrap interval): " + "; ".join(runs) + ".")

FILES = {
    "exporter": ["/etc/default/vmemtrace-exporter: VMEMTRACE_OPTS for the systemd unit",
                 "/lib/systemd/system/vmemtrace-exporter.service",
                 "/usr/share/vmemtrace/dashboards/: the Grafana dashboard, alert rules and "
                 "scrape configurations"],
    "lab": ["${XDG_CACHE_HOME:-~/.cache}/vmemtrace/: the guests' root, kernels and pmem files"],
}
COMMON_FILES = ["/proc/kallsyms, /sys/kernel/tracing/available_filter_functions: what can be "
                "probed", "/sys/kernel/btf/vmlinux: struct layouts", "/proc/kcore: the page-table "
                "walk", "/sys/bus/dax/devices/: the dax devices"]

ENVIRONMENT = [
    "VMEMTRACE_KCORE: the /proc/kcore to walk on this host, where it is mounted elsewhere (a "
    "container with the host's /proc at /host/proc)",
    "XDG_CACHE_HOME: where the lab keeps its guests' roots and kernels (lab)",
    "_VMEMTRACE_COMPLETE: shell completion (bash_source, zsh_source, fish_source), as click "
    "generates it",
]
REQUIREMENTS = (
    "Tracing: root (or CAP_SYS_ADMIN with CAP_BPF and CAP_PERFMON), python3-bpfcc, a kernel "
    "with CONFIG_BPF_SYSCALL and CONFIG_KPROBES, its BTF (/sys/kernel/btf/vmlinux) or its "
    "headers (linux-headers-RELEASE), and device-dax (CONFIG_DEV_DAX: dax_pmem, device_dax). "
    "The page-table walk (audit, and trace where the populate functions are notrace): "
    "/proc/kcore and kallsyms' data symbols (CONFIG_PROC_KCORE, CONFIG_KALLSYMS_ALL, "
    "CAP_SYS_RAWIO and CAP_SYSLOG). `vmemtrace check` says which of these this host lacks.")
# trace's line, as render.event_line() prints it: the columns, then one word for the event.
FIELDS = (
    "Each line: the time (seconds since the first event, or wall-clock with -T), the pid and "
    "comm of the task that built the vmemmap (\"-\" for what vmemtrace read itself), then the "
    "event: SECTIONS (a range's __populate_section_memmap calls summed: the pfns, calls, "
    "compound page size, altmap, vmemmap PTEs fresh and reused, allocations, PMD blocks, "
    "page-table pages), RANGE (memmap_init_zone_device: the pfns, memmap_init_compound calls "
    "and struct pages, __init_zone_device_page calls, its duration), COMPOUNDS (the range's "
    "compound pages by layout: PTEs, fresh, reused, on the first tail page; (walk) from the "
    "page tables), WALK (the page-table walk: vmemmap pages, mapped by level, distinct, "
    "reused), DEVICE (a dax device: pfns, alignment, and the CXL region it lies in, as `cxl "
    "list` names it), VMSTAT (nr_memmap_pages, and nr_memmap_boot_pages where the kernel has "
    "it), HUGETLB (a hugepage size's folios walked when tracing starts and whenever the pools "
    "change: folios, the pool, distinct vmemmap pages, folios freed), LOST and HITS (the BPF side's account at "
    "the end). --json prints each event as the event log has it.")

# Where the .deb installs docs/runbook.md (debian/vmemtrace.docs, uncompressed: debian/rules): the
# alerts' runbook_url and the unit's Documentation= point there.
RUNBOOK = "/usr/share/doc/vmemtrace/runbook.md"
ALERTS = (f"Each alert in alerts.yml links to the runbook the package installs, {RUNBOOK}, by its "
          "runbook_url: "
          "VmemtraceCheckFailed, VmemtraceHugetlbNotOptimized, VmemtraceProbeNotAttached, "
          "VmemtraceNotTracing, VmemtraceKernelSymbolsHidden, VmemtraceStale, "
          "VmemtraceEventsLost and VmemtraceExporterDown.")


def epilog(name: str) -> str:
    """The `examples:` block of a command's -h (\\b keeps click from re-wrapping it)."""
    lines = ["\b", "examples:"]
    for cmdline, what in EXAMPLES[name]:
        lines.append(f"  {cmdline}")
        lines.append(f"      {what}")
    return "\n".join(lines)


def _esc(text: str) -> str:
    """roff: backslashes and hyphens (a hyphen is a minus in options), a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return ("\\&" + text) if text[:1] in (".", "'") else text


def options(cmd: click.Command) -> list[click.Parameter]:
    """The options a page documents: every visible one, help included."""
    return [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]


def _synopsis(cmd: click.Command, name: str) -> str:
    args = " ".join(a.human_readable_name.upper() + ("..." if a.nargs == -1 else "")
                    for a in cmd.params if isinstance(a, click.Argument))
    dashes = " \\-\\-" if name in ("verify", "record") else ""
    return f".B vmemtrace {name}\n[\\fIOPTIONS\\fR]{dashes} {_esc(args)}".rstrip()


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    head, dot, _ = flat.partition(". ")
    return (head + dot).rstrip(". ").rstrip(":")


def _option(p: click.Option) -> list[str]:
    flags = ", ".join(f"\\fB{_esc(o)}\\fR" for o in p.opts + p.secondary_opts)
    if isinstance(p.type, click.Choice):
        flags += " \\fI" + _esc("{" + "|".join(p.type.choices) + "}") + "\\fR"
    elif not p.is_flag:
        flags += f" \\fI{_esc(p.metavar or p.type.name.upper())}\\fR"
    text = p.help or ""
    if p.show_default and p.default not in (None, (), False):
        text += f" (default: {p.default if not isinstance(p.default, tuple) else ','.join(p.default)})"
    return [".TP", flags, _esc(text)]


def page(name: str, cmd: click.Command, version: str, overhead: str) -> str:
    """vmemtrace-NAME(8) in man(7) roff."""
    title = f"vmemtrace-{name}".upper()
    doc = (cmd.help or "").replace("\b\n", "")
    out = [f'.TH {_esc(title)} 8 "" "vmemtrace {version}" "vmemtrace manual"',
           ".SH NAME", f"vmemtrace\\-{name} \\- {_esc(_first_sentence(doc))}",
           ".SH SYNOPSIS", _synopsis(cmd, name), ".SH DESCRIPTION"]
    out += [_esc(" ".join(par.split())) + "\n.PP" for par in doc.split("\n\n") if par.strip()]
    out.append(".SH OPTIONS")
    for p in options(cmd):
        out += _option(p)
    out.append(".SH EXAMPLES")
    for cmdline, what in EXAMPLES[name]:
        out += [".TP", f"\\fB{_esc(cmdline)}\\fR", _esc(what)]
    if name == "trace":
        out += [".SH FIELDS", _esc(FIELDS)]
    out += [".SH OVERHEAD", _esc(overhead), ".SH EXIT STATUS", _esc(EXIT_STATUS[EXIT_OF[name]])]
    if name != "replay":
        out += [".SH REQUIREMENTS", _esc(REQUIREMENTS)]
    out.append(".SH ENVIRONMENT")
    for e in ENVIRONMENT:
        var, _, what = e.partition(": ")
        out += [".TP", f"\\fB{_esc(var)}\\fR", _esc(what)]
    if name == "exporter":
        out += [".SH ALERTS", _esc(ALERTS)]
    out.append(".SH FILES")
    for f in FILES.get(name, []) + COMMON_FILES:
        path, _, what = f.partition(": ")
        out += [".TP", f"\\fI{_esc(path)}\\fR", _esc(what)]
    out += [".SH SEE ALSO", "\\fBvmemtrace\\fR(8), \\fBndctl\\fR(1), \\fBdaxctl\\fR(1), "
            "\\fBbpftrace\\fR(8)"]
    return "\n".join(out) + "\n"


def index_page(group: click.Group, version: str, overhead: str) -> str:
    """vmemtrace(8): what it is, and one line per command."""
    out = [f'.TH VMEMTRACE 8 "" "vmemtrace {version}" "vmemtrace manual"',
           ".SH NAME", "vmemtrace \\- " + _esc(" ".join((group.help or "").split())),
           ".SH SYNOPSIS", ".B vmemtrace\n\\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
           ".SH DESCRIPTION",
           _esc("Tail vmemmap pages of a compound page are reused (2 vmemmap pages kept per "
                "compound page) and memmap_init_zone_device() initialises only the struct "
                "pages it must: vmemtrace watches the kernel do it, with BPF probes where the "
                "functions are traceable and a page-table walk through /proc/kcore where they "
                "are not, and says pass, fail, or why it could not tell."),
           ".SH COMMANDS"]
    for name in sorted(group.commands):
        cmd = group.commands[name]
        out += [".TP", f"\\fBvmemtrace\\-{name}\\fR(8)",
                _esc(_first_sentence(cmd.help or ""))]
    out.append(".SH EXAMPLES")
    for name in ("lab", "check", "verify", "audit", "exporter"):
        cmdline, what = EXAMPLES[name][0]
        out += [".TP", f"\\fB{_esc(cmdline)}\\fR", _esc(what)]
    out += [".SH SHELL COMPLETION",
            _esc("bash: eval \"$(_VMEMTRACE_COMPLETE=bash_source vmemtrace)\"; zsh: "
                 "_VMEMTRACE_COMPLETE=zsh_source; fish: _VMEMTRACE_COMPLETE=fish_source."),
            ".SH OVERHEAD", _esc(overhead),
            ".SH SEE ALSO", "\\fBndctl\\fR(1), \\fBdaxctl\\fR(1), \\fBbpftrace\\fR(8)"]
    return "\n".join(out) + "\n"


def all_pages(group: click.Group, version: str, bench: list[dict] = ()) -> dict[str, str]:
    """File name -> page, for every command of the group and the group itself (no date: the
    pages in man/ must equal what this makes, on any day); bench: measured()'s summary."""
    overhead = overhead_text(list(bench))
    pages = {"vmemtrace.8": index_page(group, version, overhead)}
    for name, cmd in group.commands.items():
        pages[f"vmemtrace-{name}.8"] = page(name, cmd, version, overhead)
    return pages
