"""Runs inside the lab guest (Debian's /usr/bin/python3, the project mounted read-only).

Prepares device-dax, then for each case creates a fresh namespace and runs vmemtrace itself, as a
user would, as a subprocess. Writes one JSON document for the host to read.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from vmemtrace.lab import libdisk
from vmemtrace.lab.cases import parse_cases
from vmemtrace.probes.plan import Sources

NAMESPACE = "namespace0.0"
MODULES = ("nd_e820", "dax_pmem", "device_dax")


# Seconds one command may take (the host's --command-timeout: most of the guest's time).
COMMAND_TIMEOUT = [600.0]


def sh(cmd, check=False, timeout=None):
    timeout = COMMAND_TIMEOUT[0] if timeout is None else timeout
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def log(message):
    print(f"guest: {message}", flush=True)


def prepare():
    """debugfs for the kprobe blacklist; the nvdimm and dax drivers for the memmap= region;
    loopback up (virtme-ng leaves it down without a network) for the exporter and Prometheus."""
    sh(["ip", "link", "set", "lo", "up"])
    if not os.path.exists("/sys/kernel/debug/kprobes"):
        sh(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"])
    if not os.path.exists("/sys/kernel/tracing/README"):
        sh(["mount", "-t", "tracefs", "none", "/sys/kernel/tracing"])
    for module in MODULES:
        sh(["modprobe", module], check=True)
    # The region comes up as an fsdax namespace with its own memmap (docs/kernels.md); wait for it.
    for _ in range(50):
        if sh(["ndctl", "list", "-N"]).stdout.strip():
            break
        time.sleep(0.1)
    return load_libraries()


def load_libraries():
    """BCC's libraries from the lab's disk into tmpfs, for every later process (lab/libdisk.py
    says why); how many files, or None when the guest has no such disk."""
    device = libdisk.find_device()
    if device is None:
        return None
    os.makedirs(libdisk.GUEST_DIR, exist_ok=True)
    start = time.monotonic()
    sh(["tar", "-x", "-f", device, "-C", libdisk.GUEST_DIR], check=True)
    names = os.listdir(libdisk.GUEST_DIR)
    os.environ["LD_LIBRARY_PATH"] = libdisk.GUEST_DIR
    log(f"{len(names)} libraries for BCC unpacked from {device} in {time.monotonic() - start:.1f}s")
    return len(names)


def evidence():
    """Raw lines about every probe target, read with grep rather than vmemtrace's own readers:
    an independent witness for the end-to-end tests, and the source of the unit-test fixtures."""
    from vmemtrace.kernel.config import RELEVANT, config_paths
    from vmemtrace.kernel.facts import DATA_SYMBOLS
    from vmemtrace.probes.targets import TARGETS

    names = "|".join([t.name for t in TARGETS] + list(DATA_SYMBOLS))
    pattern = rf"[[:space:]]({names})(\.[a-z]+(\.[0-9]+)*)?([[:space:]]|$)"

    def grep(path, regex):
        return sh(["grep", "-E", regex, path]).stdout.splitlines()

    release = os.uname().release
    config_path = next((p for p in config_paths(release) if os.path.exists(p)), None)
    return {
        "osrelease": release,
        "kallsyms": grep("/proc/kallsyms", pattern),
        "available_filter_functions": grep("/sys/kernel/tracing/available_filter_functions",
                                           rf"^({names})(\.[a-z]+(\.[0-9]+)*)?([[:space:]]|$)"),
        "kprobe_blacklist": grep("/sys/kernel/debug/kprobes/blacklist", pattern),
        "config_path": config_path,
        "config": grep(config_path, rf"CONFIG_({'|'.join(RELEVANT)})[= ]") if config_path else [],
    }


def vmemtrace(*args):
    """Run the real CLI; (exit code, parsed JSON or None, stderr)."""
    proc = sh([sys.executable, "-m", "vmemtrace", *args])
    try:
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        doc = None
    return proc.returncode, doc, proc.stderr.strip()


def run_case(case, out_dir, cross_check):
    """A fresh namespace under `vmemtrace verify` (with --cross-check where the probes see the
    populate), then `vmemtrace audit` of what it left; the event logs are kept for replay tests."""
    # Disable the previous namespace first, so that the traced command only creates: a legacy
    # memmap= region starts as fsdax with its own memmap (docs/kernels.md), and even raw mode maps
    # pages there; tearing that down inside the traced command would blur nr_memmap_pages.
    sh(["ndctl", "disable-namespace", NAMESPACE])
    log = os.path.join(out_dir, f"{case.name}.jsonl")
    cross = ["--cross-check"] if cross_check else []
    code, doc, err = vmemtrace("verify", "--json", "--record", log, *cross, "--",
                               *case.ndctl_args(NAMESPACE))
    ns = sh(["ndctl", "list", "-N", "-n", NAMESPACE]).stdout
    namespace = json.loads(ns)[0] if ns.strip() else None
    a_code, a_doc, a_err = vmemtrace("audit", "--json", "--record",
                                     os.path.join(out_dir, f"{case.name}.audit.jsonl"))
    return {"result": doc or _error_doc(code, err), "verify_exit": code, "namespace": namespace,
            "stderr_tail": err.splitlines()[-3:], "audit": a_doc or _error_doc(a_code, a_err),
            "audit_exit": a_code}


def _error_doc(code, err):
    return {"verdict": "error", "problems": [err.splitlines()[-1] if err else f"exit {code}"],
            "devices": []}


def install_wrapper():
    """`vmemtrace` on PATH for --exec commands, running the mounted project tree."""
    bindir = "/tmp/vmemtrace-bin"
    os.makedirs(bindir, exist_ok=True)
    with open(f"{bindir}/vmemtrace", "w") as fh:
        fh.write(f"#!/bin/sh\nexec {sys.executable} -m vmemtrace \"$@\"\n")
    os.chmod(f"{bindir}/vmemtrace", 0o755)
    os.environ["PATH"] = f"{bindir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"


def run_exec(command, out):
    """Prepare device-dax, then run one shell command; its output and exit code go to out."""
    libraries = prepare()
    install_wrapper()
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT[0])
    write_result({"kernel": os.uname().release, "exit": proc.returncode, "stdout": proc.stdout,
                  "stderr": proc.stderr, "bcc_libraries": libraries}, out)


def write_result(doc, out):
    """Whole or not at all: the host reads a missing file as "the guest died"."""
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.rename(out)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases")
    parser.add_argument("--exec-file", dest="command_file")
    parser.add_argument("--out", required=True)
    parser.add_argument("--command-timeout", type=float, default=COMMAND_TIMEOUT[0])
    args = parser.parse_args(argv)
    COMMAND_TIMEOUT[0] = args.command_timeout
    if args.command_file is not None:
        return run_exec(Path(args.command_file).read_text(), args.out)
    doc = {"kernel": os.uname().release, "cases": []}
    try:
        doc["bcc_libraries"] = prepare()
        code, doc["check"], err = vmemtrace("check", "--json")
        doc["check_exit"], doc["check_error"] = code, err
        doc["evidence"] = evidence()
        cross = bool(doc["check"]) and Sources.from_strategy(doc["check"]["strategy"]).cross_checkable
        for case in parse_cases(args.cases):
            log(f"case {case.name}")
            start = time.monotonic()
            entry = {"case": case.name}
            entry.update(run_case(case, os.path.dirname(args.out), cross))
            entry["seconds"] = round(time.monotonic() - start, 2)
            doc["cases"].append(entry)
    except Exception as e:  # report, never die silently: the host shows this line
        doc["error"] = f"{type(e).__name__}: {e}"
    write_result(doc, args.out)
    log("done")


if __name__ == "__main__":
    main()
