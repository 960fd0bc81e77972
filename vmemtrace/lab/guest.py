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

from vmemtrace.lab import deb, libdisk
from vmemtrace.lab.cases import Hugetlb, Multi, parse_cases
from vmemtrace.probes.plan import Sources

NAMESPACE = "namespace0.0"


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


def listed(tool, *args):
    """`ndctl list`, `cxl list`: their JSON, [] where they print nothing (nothing matched)."""
    out = sh([tool, "list", *args]).stdout
    return json.loads(out) if out.strip() else []


def ndctl_list(*args):
    return listed("ndctl", *args)


def _wait_for(what):
    for _ in range(100):
        if what():
            return
        time.sleep(0.1)


class E820:
    """The memmap= region (lab/cases.py Region): label-less, one namespace, namespace0.0, which
    comes up at boot as fsdax with its own memmap (docs/kernels.md)."""

    modules = ("nd_e820", "dax_pmem", "device_dax")

    def settle(self):
        _wait_for(lambda: ndctl_list("-N"))

    def clear(self):
        # Disable the previous namespace first, so that the traced command only creates:
        # tearing the fsdax one down inside the traced command would blur nr_memmap_pages.
        sh(["ndctl", "disable-namespace", NAMESPACE])

    def create(self, case):
        return case.ndctl_args(NAMESPACE)


DAX_DRIVER_DEVICES = "/sys/bus/dax/drivers/device_dax"


class Nfit:
    """qemu's NVDIMMs (lab/nfit.py): a region each, their label areas blank at every boot."""

    modules = ("nfit", "dax_pmem", "device_dax")

    def settle(self):
        _wait_for(lambda: len(ndctl_list("-R")) >= 2)
        # Blank labels: the regions come up without a namespace table until they are written.
        for step in (["disable-region", "all"], ["init-labels", "-f", "all"], ["enable-region", "all"]):
            sh(["ndctl", *step], check=True)
        _wait_for(lambda: all(r.get("available_size") for r in ndctl_list("-R")))

    def regions(self):
        """(name, size) of each region, in name order, and the largest of their alignments."""
        regions = sorted(ndctl_list("-R"), key=lambda r: r["dev"])
        return [(r["dev"], r["size"]) for r in regions], max(r.get("align", 0) for r in regions)

    def clear(self):
        sh(["ndctl", "destroy-namespace", "-f", "all"])

    def create(self, case):
        regions, align = self.regions()
        if isinstance(case, Multi) and case.rebind:
            sh(case.command(regions, align), check=True)
            devices = sorted(os.listdir(DAX_DRIVER_DEVICES))
            devices = [d for d in devices if d.startswith("dax")]
            for name in devices:
                with open(f"{DAX_DRIVER_DEVICES}/unbind", "w") as fh:
                    fh.write(name)
            binds = "".join(f"echo {name} > {DAX_DRIVER_DEVICES}/bind & p{i}=$!; "
                            for i, name in enumerate(devices))
            waits = "".join(f"wait $p{i} || s=$?; " for i in range(len(devices)))
            return ["sh", "-c", binds + "s=0; " + waits + "exit $s"]
        if isinstance(case, Multi):
            return case.command(regions, align)
        name, size = regions[0]
        return case.create_args(["-r", name, "-s", str(size)])


def cxl_list(*args):
    return listed("cxl", *args)


class Cxl(Nfit):
    """qemu's CXL type 3 device (lab/cxl.py): cxl(1) makes one persistent region of all its
    capacity in the root decoder (the fixed memory window), as an operator would; cxl_pmem
    makes it an nvdimm region whose labels live in the device's label storage area, where the
    cases create namespaces as on NFIT."""

    modules = ("cxl_acpi", "cxl_pci", "cxl_mem", "cxl_pmem", "dax_pmem", "device_dax")

    def settle(self):
        _wait_for(lambda: cxl_list("-M") and cxl_list("-D", "-d", "root"))
        memdevs, roots = cxl_list("-M"), cxl_list("-D", "-d", "root")
        if not memdevs or not roots:
            raise RuntimeError("no CXL memory device or root decoder came up "
                               f"(cxl list: {len(memdevs)} memdevs, {len(roots)} root decoders)")
        sh(["cxl", "create-region", "-m", "-d", roots[0]["decoder"], "-t", "pmem",
            "-w", str(len(memdevs)), *(m["memdev"] for m in memdevs)], check=True)
        _wait_for(lambda: any(r.get("available_size") for r in ndctl_list("-R")))
        if not ndctl_list("-R"):
            said = [line for line in sh(["dmesg"]).stdout.splitlines() if "cxl" in line]
            raise RuntimeError("cxl create-region made a region but no nvdimm region came up "
                               f"for it (kernel: {said[-1].strip() if said else 'nothing'})")

    def listing(self):
        """`cxl list` of the regions, memdevs and decoders, for the host to join devices with."""
        return cxl_list("-R", "-M", "-D")


PMEM = {"e820": E820, "nfit": Nfit, "cxl": Cxl}


def prepare(pmem):
    """debugfs for the kprobe blacklist; the nvdimm and dax drivers for the guest's persistent
    memory; loopback up (virtme-ng leaves it down without a network) for the exporter and
    Prometheus."""
    sh(["ip", "link", "set", "lo", "up"])
    if not os.path.exists("/sys/kernel/debug/kprobes"):
        sh(["mount", "-t", "debugfs", "none", "/sys/kernel/debug"])
    if not os.path.exists("/sys/kernel/tracing/README"):
        sh(["mount", "-t", "tracefs", "none", "/sys/kernel/tracing"])
    for module in pmem.modules:
        sh(["modprobe", module], check=True)
    pmem.settle()
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


def run_case(case, pmem, out_dir, cross_check):
    """Fresh namespaces under `vmemtrace verify` (with --cross-check where the probes see the
    populate), then `vmemtrace audit` of what they left; the event logs are kept for replay
    tests. The namespaces of the case before are gone first: the traced command only creates."""
    pmem.clear()
    log = os.path.join(out_dir, f"{case.name}.jsonl")
    cross = ["--cross-check"] if cross_check else []
    attach = ["--attach", case.attach] if getattr(case, "attach", "auto") != "auto" else []
    command = pmem.create(case)
    code, doc, err = vmemtrace("verify", "--json", "--record", log, *cross, *attach, "--",
                               *command)
    namespaces = [ns for ns in ndctl_list("-N") if ns.get("mode") == "devdax"]
    a_code, a_doc, a_err = vmemtrace("audit", "--json", "--record",
                                     os.path.join(out_dir, f"{case.name}.audit.jsonl"))
    return {"result": doc or _error_doc(code, err), "verify_exit": code, "command": command,
            "namespace": namespaces[0] if len(namespaces) == 1 else None,
            "namespaces": namespaces, "stderr_tail": err.splitlines()[-3:],
            "audit": a_doc or _error_doc(a_code, a_err), "audit_exit": a_code}


def run_hugetlb(case, out_dir):
    """HVO switched on or off (vm.hugetlb_optimize_vmemmap), the case's hugetlb pages allocated
    under `vmemtrace verify`, every folio audited, then all freed under verify again; the event
    logs kept for replay tests."""
    with open("/proc/sys/vm/hugetlb_optimize_vmemmap", "w") as f:
        f.write("1" if case.hvo else "0")
    entry = {}
    for key, count, suffix in (("result", case.count, ""), ("free", 0, ".free")):
        command = case.command(count)
        log = os.path.join(out_dir, f"{case.name}{suffix}.jsonl")
        for attempt in range(1, 4 if count else 2):
            # A 1 GiB page needs a free, aligned GiB: compact first, and again before another
            # try (a verify that allocated nothing changed nothing).
            with open("/proc/sys/vm/compact_memory", "w") as f:
                f.write("1")
            code, doc, err = vmemtrace("verify", "--json", "--record", log, "--", *command)
            with open(case.nr_hugepages) as f:
                pool = int(f.read())
            entry[f"{key}_attempts"] = attempt
            if pool == count:
                break
        entry.update({key: doc or _error_doc(code, err), f"{key}_command": command,
                      f"{key}_exit": code, f"{key}_pool": pool})
        if key == "result":
            entry["verify_exit"], entry["command"] = code, command
            a_code, a_doc, a_err = vmemtrace("audit", "--json", "--record",
                                             os.path.join(out_dir, f"{case.name}.audit.jsonl"))
            entry.update({"audit": a_doc or _error_doc(a_code, a_err), "audit_exit": a_code})
            if pool != case.count:  # said, where the verdict alone would leave it a puzzle
                entry["problem"] = (f"the kernel allocated {pool} of {case.count} hugetlb pages "
                                    f"({case.nr_hugepages}): guest memory fragmented?")
    return entry


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


def run_exec(command, pmem, out, systemd=False):
    """Prepare device-dax, then run one shell command; its output and exit code go to out.
    systemd: the .deb in the results directory installed and its unit running first."""
    doc = {"kernel": os.uname().release}
    try:
        doc["bcc_libraries"] = prepare(pmem)
        if systemd:
            doc["unit"] = deb.install_and_start(os.path.dirname(out))
    except Exception as e:  # the host shows this line, with the console's tail
        doc["error"] = f"{type(e).__name__}: {e}"
        return write_result(doc, out)
    install_wrapper()
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT[0])
    doc.update({"exit": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr})
    write_result(doc, out)


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
    parser.add_argument("--pmem", choices=sorted(PMEM), default="e820")
    parser.add_argument("--systemd", action="store_true")
    args = parser.parse_args(argv)
    COMMAND_TIMEOUT[0] = args.command_timeout
    pmem = PMEM[args.pmem]()
    if args.command_file is not None:
        return run_exec(Path(args.command_file).read_text(), pmem, args.out, args.systemd)
    doc = {"kernel": os.uname().release, "pmem": args.pmem, "cases": []}
    try:
        doc["bcc_libraries"] = prepare(pmem)
        if hasattr(pmem, "listing"):
            doc[args.pmem] = pmem.listing()
        code, doc["check"], err = vmemtrace("check", "--json")
        doc["check_exit"], doc["check_error"] = code, err
        doc["evidence"] = evidence()
        cross = bool(doc["check"]) and Sources.from_strategy(doc["check"]["strategy"]).cross_checkable
        for case in parse_cases(args.cases, args.pmem):
            log(f"case {case.name}")
            start = time.monotonic()
            entry = {"case": case.name}
            if isinstance(case, Hugetlb):
                entry.update(run_hugetlb(case, os.path.dirname(args.out)))
            else:
                entry.update(run_case(case, pmem, os.path.dirname(args.out), cross))
            entry["seconds"] = round(time.monotonic() - start, 2)
            doc["cases"].append(entry)
    except Exception as e:  # report, never die silently: the host shows this line
        doc["error"] = f"{type(e).__name__}: {e}"
    write_result(doc, args.out)
    log("done")


if __name__ == "__main__":
    main()
