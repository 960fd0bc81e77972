"""End to end in lab guests: trace, stats, Ctrl-C/SIGTERM detaching, verify's refusals, and
--expect optimized on a kernel without the feature, the BTF layout, SIGKILL. One guest boot per
kernel runs every script meant for it, each printing its own section (a boot costs about a minute
under TCG); the guests that need another command line boot on their own."""

import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli
from vmemtrace.probes.targets import PROGRAMS

pytestmark = pytest.mark.lab

NDCTL = "ndctl create-namespace -f -e namespace0.0 -m devdax -M mem"
WAIT_ATTACHED = 'for i in $(seq 300); do grep -q attached {err} && break; sleep 1; done'
# Probes on the targets, either way they attach: kprobes (kprobes/list) and BPF trampolines, which
# ftrace lists among its enabled functions with their direct call (as it does kprobes on ftrace).
ATTACHMENTS = "/sys/kernel/debug/kprobes/list /sys/kernel/tracing/enabled_functions"
COUNT_KPROBES = ("cat " + ATTACHMENTS + " | grep -c -E '(memmap_init_zone_device|"
                 "vmemmap_populate_address|__populate_section_memmap)'")

SCRIPT_6_12 = f"""
ndctl disable-namespace namespace0.0 >/dev/null 2>&1
vmemtrace trace -T --duration 600 > /tmp/trace.out 2> /tmp/trace.err &
pid=$!
{WAIT_ATTACHED.format(err="/tmp/trace.err")}
{NDCTL} -a 1G > /dev/null
sleep 2
echo "kprobes-during=$({COUNT_KPROBES})"
kill -TERM $pid; wait $pid; echo "trace-exit=$?"
echo "kprobes-after=$({COUNT_KPROBES})"
echo "--- trace"; cat /tmp/trace.out; echo "--- end"
ndctl disable-namespace namespace0.0 >/dev/null 2>&1
vmemtrace stats 6 1 --json > /tmp/stats.out 2> /tmp/stats.err &
pid=$!
{WAIT_ATTACHED.format(err="/tmp/stats.err")}
{NDCTL} -a 2M > /dev/null
wait $pid; echo "stats-exit=$?"
echo "--- stats"; cat /tmp/stats.out; echo "--- end"
echo "--- audit-ns"; vmemtrace audit -d namespace0.0 --json; echo "--- end"
vmemtrace audit -d dax9.9 > /dev/null 2> /tmp/a.err; echo "nodev-exit=$?"
echo "nodev-err=$(tail -1 /tmp/a.err)"
vmemtrace verify -- ndctl create-namespace -e namespace9.9 > /dev/null 2> /tmp/v.err; echo "noop-exit=$?"
echo "noop-err=$(tail -1 /tmp/v.err)"
vmemtrace verify -- /nonexistent/cmd > /dev/null 2> /tmp/v.err; echo "nocmd-exit=$?"
echo "nocmd-err=$(tail -1 /tmp/v.err)"
echo "--- timing"; vmemtrace check --timing --json; echo "--- end"
echo "kprobes-after-timing=$({COUNT_KPROBES})"
"""

SCRIPT_5_10 = f"""
vmemtrace verify --expect optimized -- {NDCTL} -a 2M > /dev/null 2> /tmp/v.err; echo "optimized-exit=$?"
echo "optimized-err=$(tail -1 /tmp/v.err)"
vmemtrace verify --cross-check -- {NDCTL} -a 2M > /dev/null 2> /tmp/v.err; echo "cross-exit=$?"
echo "cross-err=$(tail -1 /tmp/v.err)"
"""

# 4-level paging for real: TCG's -cpu max offers LA57, so the default lab runs 5-level.
SCRIPT_4_LEVEL = f"""
ndctl disable-namespace namespace0.0 >/dev/null 2>&1
vmemtrace audit > /dev/null 2> /tmp/a.err; echo "empty-exit=$?"
echo "empty-err=$(tail -1 /tmp/a.err)"
{NDCTL} -a 1G > /dev/null
echo "--- audit"; vmemtrace audit --json; echo "--- end"
"""


def guest(series, script, *extra):
    res = run_cli("lab", "--kernel", series, *extra, "--exec", script)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def value(out, key):
    m = re.search(rf"^{key}=(.*)$", out, re.M)
    assert m, f"{key} missing from:\n{out}"
    return m.group(1)


def section(out, name):
    return out.split(f"--- {name}\n", 1)[1].split("--- end", 1)[0]


@pytest.fixture(scope="module")
def booted():
    """booted(series, script): that script's output, from the one boot of that kernel that runs
    all of PER_KERNEL[series] in order."""
    outputs = {}

    def run(series, name):
        if series not in outputs:
            script = "\n".join(f"echo '{MARK}{n}'\n{SCRIPTS[n]}" for n in PER_KERNEL[series])
            try:
                out = guest(series, script)
            except AssertionError as e:  # kept: the next test of this kernel must not boot again
                outputs[series] = e
                raise
            parts = re.split(rf"^{re.escape(MARK)}(\S+)\n", out, flags=re.M)[1:]
            outputs[series] = dict(zip(parts[::2], parts[1::2]))
        if isinstance(outputs[series], AssertionError):
            raise outputs[series]
        return outputs[series][name]
    return run


@pytest.fixture(scope="module")
def out_6_12(booted):
    return booted("6.12", "6.12")


def test_trace_prints_one_line_per_event(out_6_12):
    header, *rows = section(out_6_12, "trace").splitlines()
    assert header.split() == ["TIME", "PID", "COMM", "EVENT"]
    # -T: wall-clock HH:MM:SS.us; the kernel's events name the task that built the vmemmap.
    lines = []
    for row in rows:
        when, pid, comm, event = row.split(None, 3)
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6}", when), row
        lines.append((pid, comm, event))
    kernel = [(pid, comm) for pid, comm, e in lines if e.startswith(("SECTION", "RANGE"))]
    assert kernel and all(pid.isdigit() and comm == "ndctl" for pid, comm in kernel), kernel
    assert all((pid, comm) == ("-", "-") for pid, comm, e in lines if e.startswith("COMPOUNDS"))
    events = [e for _, _, e in lines]
    ranges = [l for l in events if l.startswith("RANGE")]
    assert len(ranges) == 1
    assert "compound 262144" in ranges[0] and "memmap_init_compound 3 calls 384 struct pages" in ranges[0]
    # one summary of the range's 24 section calls, before it; one of its compound pages, after
    (sections,) = [l for l in events if l.startswith("SECTIONS")]
    assert " 24 calls " in sections and events.index(sections) < events.index(ranges[0])
    (compounds,) = [l for l in events if l.startswith("COMPOUNDS")]
    assert "3 compound pages: 3 with ptes 4096 fresh 2 reused 4094 on-first-tail 4094" in compounds
    assert events.index(compounds) > events.index(ranges[0])


def test_audit_names_devices_as_ndctl_and_daxctl_do(out_6_12):
    doc = json.loads(section(out_6_12, "audit-ns"))
    (dev,) = doc["devices"]
    assert (dev["chardev"], dev["namespace"]) == ("dax0.0", "namespace0.0")
    assert doc["verdict"] == "pass"
    assert value(out_6_12, "nodev-exit") == "2"
    assert "no dax device 'dax9.9'" in value(out_6_12, "nodev-err")


def test_sigterm_detaches_everything(out_6_12):
    assert int(value(out_6_12, "kprobes-during")) >= 3
    assert value(out_6_12, "trace-exit") == "0"
    assert value(out_6_12, "kprobes-after") == "0"


def test_check_timing_attaches_detaches_and_accounts_for_the_start(out_6_12):
    """check --timing starts tracing as verify does: every span lies between the process's
    start and the moment it attached, the compile among them, and nothing stays attached."""
    doc = json.loads(section(out_6_12, "timing"))
    spans = {t["phase"]: t for t in doc["timing"]}
    total = spans.pop("total: start to attached")
    assert total["start"] == 0 and total["seconds"] > 1
    assert {"interpreter and imports", "BCC: compile and load", "attach",
            "kernel facts: kallsyms, ftrace, config, BTF", "waiting for the compile"} <= set(spans)
    for t in spans.values():
        assert 0 <= t["start"] <= t["end"] <= total["end"] + 0.01, t
    # the compile overlaps the reading of the facts: it ran in its own thread meanwhile
    compile_, facts = spans["BCC: compile and load"], spans["kernel facts: kallsyms, ftrace, config, BTF"]
    assert compile_["start"] < facts["end"] and facts["start"] < compile_["end"]
    assert doc["can_trace"] is True
    assert value(out_6_12, "kprobes-after-timing") == "0"


def test_stats_interval_count(out_6_12):
    assert value(out_6_12, "stats-exit") == "0"
    docs = [json.loads(l) for l in section(out_6_12, "stats").splitlines() if l.strip()]
    assert len(docs) == 1
    (dev,) = docs[0]["devices"]
    assert dev["vmemmap_pages"]["observed"] == 3072
    assert dev["struct_pages_initialized"]["observed"] == 196608


def test_verify_refusals(out_6_12):
    assert value(out_6_12, "noop-exit") == "2"
    assert "no device-dax range was set up" in value(out_6_12, "noop-err")
    assert value(out_6_12, "nocmd-exit") == "2"
    assert value(out_6_12, "nocmd-err") == "vmemtrace: cannot run /nonexistent/cmd: No such file or directory"


def test_5_10_expect_optimized_fails_on_feature_present(booted):
    out = booted("5.10", "5.10")
    assert value(out, "optimized-exit") == "1"
    err = value(out, "optimized-err")
    assert err.startswith("vmemtrace: fail: dax0.0 feature-present:")
    assert value(out, "cross-exit") == "2"
    assert "--cross-check compares the populate probes with the page-table walk" in value(out, "cross-err")


def test_audit_on_4_level_paging_and_with_nothing_to_audit():
    out = guest("6.12", SCRIPT_4_LEVEL, "--append", "no5lvl")
    assert value(out, "empty-exit") == "2"
    assert value(out, "empty-err") == ("vmemtrace: error: no dax device with memory in "
                                       "/sys/bus/dax/devices: nothing to audit")
    doc = json.loads(section(out, "audit"))
    (dev,) = doc["devices"]
    assert doc["verdict"] == "pass"
    assert dev["page_table_walk"]["paging"] == 4
    assert dev["page_table_walk"]["levels"] == {"pte": 12288}
    assert dev["vmemmap_pages"] == {"naive": 12288, "expected": 6, "observed": 6}


def test_audit_and_check_refused_under_lockdown_confidentiality():
    """A real kernel in lockdown=confidentiality forbids /proc/kcore and tracefs: one line each,
    exit 2."""
    script = ('vmemtrace audit 2> /tmp/a.err; echo "audit-exit=$?"; echo "audit-err=$(tail -1 /tmp/a.err)"\n'
              'vmemtrace check > /dev/null 2> /tmp/c.err; echo "check-exit=$?"; '
              'echo "check-err=$(tail -1 /tmp/c.err)"')
    out = guest("6.12", script, "--append", "lockdown=confidentiality")
    assert value(out, "audit-exit") == "2"
    assert value(out, "audit-err").startswith("vmemtrace: cannot walk the page tables: kernel lockdown")
    assert value(out, "check-exit") == "2"
    assert "kernel lockdown is in confidentiality mode: it forbids tracefs" in value(out, "check-err")


def _parents():
    """{pid: (parent pid, command name)} of every live process now."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone meanwhile
            continue
        # comm may hold spaces and parentheses: the fields after its last ")" are fixed
        comm, rest = text.split("(", 1)[1].rsplit(")", 1)
        state, ppid = rest.split()[:2]
        if state != "Z":  # a zombie has ended; its parent only has not reaped it
            parents[int(stat.parent.name)] = (int(ppid), comm)
    return parents


def _guests_of(pid):
    """The live qemu processes below pid: this lab's guest, not those of labs beside it."""
    parents = _parents()

    def below(p):
        while p in parents and p > 1:
            p = parents[p][0]
            if p == pid:
                return True
        return False
    return {p for p, (_, comm) in parents.items() if comm.startswith("qemu-system") and below(p)}


def test_sigterm_to_the_lab_leaves_no_guest_running():
    import os
    import signal
    import subprocess
    import sys
    import time

    lab = subprocess.Popen([sys.executable, "-m", "vmemtrace", "lab", "--kernel", "6.12",
                            "--exec", "sleep 600"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    guests = set()
    while not guests and time.monotonic() < deadline:
        time.sleep(1)
        guests = _guests_of(lab.pid)
    assert guests, "the guest never started"
    os.kill(lab.pid, signal.SIGTERM)
    try:
        assert lab.wait(timeout=60) == 130
    finally:
        lab.kill()  # never leave a lab behind for the next test, whatever failed
    assert lab.stderr.read().strip().splitlines()[-1] == "vmemtrace: interrupted"
    alive = set(_parents())
    assert not guests & alive, f"the lab's guest {guests} outlived it"


def test_btf_layout_is_the_headers_layout(booted, series):
    """On each real kernel: the offsets read from its BTF pass the compiler's comparison with its
    headers (LAYOUT_CHECK), the verifier loads every function, and one moved offset is caught."""
    doc = json.loads(booted(series, "layout"))
    assert doc["kernel"].startswith(series + ".")
    for build in ("checked", "headers"):
        assert doc[build]["ok"], doc[build]["errors"]
        assert doc[build]["loaded"] == sorted(PROGRAMS)
    assert not doc["moved"]["ok"]
    # The assertion names VT_LAYOUT's entry (clang 14 quotes the message, clang 19 does not).
    assert any("PGMAP_FLAGS" in line for line in doc["moved"]["errors"])
    layout = doc["layout"]
    assert layout["struct_page"] == 64 and layout["range_size"] == 16
    # struct dev_pagemap gained vmemmap_shift in 5.17 (include/linux/memremap.h)
    assert (layout["pgmap_vmemmap_shift"] is None) == (series == "5.10")


# Every tracing command, killed with SIGKILL once attached: the kernel must drop its probes and
# programs with the process (perf-event kprobes, trampolines' links), with no other vmemtrace run
# to tidy up.
SCRIPT_KILL = """
events() { grep -c . /sys/kernel/tracing/kprobe_events; }
probes() { cat """ + ATTACHMENTS + """ | \\
    grep -c -E '(vmemmap_|__populate_section_memmap|memmap_init|__init_zone_device_page)'; }
programs() { bpftool prog show | grep -c -E ' name (section_|vpa_|alloc_|mizd_|mic_|izdp_|kfunc__|kretfunc_)'; }
echo "before=$(events) $(probes) $(programs)"
n=0
for cmd in "trace --duration 600" "verify -- sleep 600" "exporter --listen 127.0.0.1:9479"; do
    n=$((n + 1))
    vmemtrace $cmd > /tmp/kill.out 2> /tmp/kill.$n.err &
    pid=$!
    for i in $(seq 300); do grep -q attached /tmp/kill.$n.err && break; sleep 1; done
    echo "during-$n=$(events) $(probes) $(programs)"
    kill -9 $pid; wait $pid 2>/dev/null
    pkill -9 -x sleep
    sleep 1
    echo "after-$n=$(events) $(probes) $(programs)"
done
vmemtrace check --json > /tmp/check.json; echo "check-exit=$?"
echo "leftovers=$(python3 -c 'import json; print(len(json.load(open("/tmp/check.json"))["leftover_kprobes"]))')"
# A BCC tracer that asked for maxactive gets a legacy kprobe_events entry, which outlives it.
python3 -c "
from bcc import BPF; import time
b = BPF(text='int f(void *ctx) { return 0; }')
b.attach_kretprobe(event='memmap_init_zone_device', fn_name='f', maxactive=64)
print('attached', flush=True); time.sleep(600)" > /tmp/legacy.out 2>&1 &
pid=$!
for i in $(seq 120); do grep -q attached /tmp/legacy.out && break; sleep 1; done
kill -9 $pid; wait $pid 2>/dev/null
echo "legacy-left=$(events)"
vmemtrace check --json > /tmp/check.json
echo "legacy-listed=$(python3 -c 'import json; print(json.load(open("/tmp/check.json"))["leftover_kprobes"])')"
vmemtrace trace --duration 1 > /dev/null 2> /tmp/legacy.err
echo "legacy-said=$(grep -c 'removed 1 kprobe events left by dead tracers' /tmp/legacy.err)"
echo "legacy-after=$(events)"
"""


@pytest.mark.parametrize("series", ("6.12", "7.3"))
def test_sigkill_leaves_nothing_in_the_kernel(booted, series):
    out = booted(series, "kill")
    before = value(out, "before").split()
    assert before == ["0", "0", "0"], out
    for n in (1, 2, 3):
        during = [int(x) for x in value(out, f"during-{n}").split()]
        assert during[1] >= 3 and during[2] >= 3, (n, out)  # really attached
        assert value(out, f"after-{n}").split() == before, (n, out)
    assert value(out, "check-exit") == "0" and value(out, "leftovers") == "0"
    # The legacy interface, which BCC uses for maxactive: named, listed by check, removed.
    assert value(out, "legacy-left") == "1"
    assert "memmap_init_zone_device" in value(out, "legacy-listed")
    assert value(out, "legacy-said") == "1" and value(out, "legacy-after") == "0"


# Debian 7.3 inlines vmemmap_alloc_block_buf at every call site: attached alone (the other
# allocators left out with --no-probe), its probe is blind. The counts must not add up, and the
# range must be judged by its page tables, never by a zero.
SCRIPT_BLIND = f"""
ndctl disable-namespace namespace0.0 >/dev/null 2>&1
vmemtrace verify --json --no-probe vmemmap_alloc_block --no-probe altmap_alloc_block_buf \\
    -- {NDCTL} -a 2M > /tmp/blind.json 2> /tmp/blind.err; echo "blind-exit=$?"
echo "--- blind"; cat /tmp/blind.json; echo "--- end"
"""


def test_a_blind_allocator_probe_falls_back_to_the_walk(booted):
    out = booted("7.3", "blind")
    assert value(out, "blind-exit") == "0", out
    doc = json.loads(section(out, "blind"))
    assert doc["strategy"]["vmemmap_alloc_block_buf"] == "fentry+fexit"  # attached, never hit
    assert doc["strategy"]["vmemmap_alloc_block"] == "excluded"
    (dev,) = doc["devices"]
    assert "blind" in dev["probe_account"]["alloc"] and "vmemmap_alloc_block_buf" in dev["probe_account"]["alloc"]
    assert dev["vmemmap_pages"]["observed"] == 3072 and dev["optimized"] is True
    c = {c["name"]: c for c in dev["checks"]}
    assert c["accounting"]["status"] == "pass"
    assert "distinct pages behind the vmemmap" in c["accounting"]["detail"]
    assert "; probes: " in c["accounting"]["detail"] and "blind" in c["accounting"]["detail"]
    assert c["tail-reuse"]["status"] == "pass" and "(page-table walk)" in c["tail-reuse"]["detail"]
    assert c["init-skip"]["status"] == "pass"


LAYOUT = "python3 /opt/vmemtrace/tests/lab/guest_layout.py"
SCRIPTS = {"layout": LAYOUT, "5.10": SCRIPT_5_10, "6.12": SCRIPT_6_12, "kill": SCRIPT_KILL,
           "blind": SCRIPT_BLIND}
# The layout first, with nothing attached yet; SIGKILL's count of what is left starts from zero.
PER_KERNEL = {"5.10": ("layout", "5.10"), "6.1": ("layout",), "6.12": ("layout", "kill", "6.12"),
              "7.3": ("layout", "kill", "blind")}
MARK = "=== vmemtrace-test: "
