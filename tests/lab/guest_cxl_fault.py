"""Runs inside a lab guest with `--pmem cxl --pmem-start 9472M` (python3 tests/lab/guest_cxl_fault.py
OUT): a 1 GiB device-dax namespace on a CXL region 256 MiB past a 1 GiB boundary, created under
`vmemtrace verify` (its log recorded in OUT), audited, then used as a program would: one 1 GiB
mapping written at its start in a child process. Prints one JSON document.

Driven by tests/lab/test_lab_e2e_cxl.py; the assertions live there.
"""

import json
import mmap
import os
import signal
import subprocess
import sys

sys.path.insert(0, "/opt/vmemtrace")
from vmemtrace.lab.guest import cxl_list, vmemtrace  # noqa: E402  (the lab's own runner)

GiB = 1 << 30
MARK = b"vmemtrace: written through the 1 GiB mapping"


def run(*args):
    code, doc, err = vmemtrace(*args)
    return {"exit": code, "doc": doc, "stderr": err.splitlines()[-3:]}


def write_first_gib(path):
    """In a child: a fault the kernel cannot serve kills it with SIGBUS, as it would a user's."""
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_RDWR)
        m = mmap.mmap(fd, GiB, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[:len(MARK)] = MARK
        os._exit(0 if m[:len(MARK)] == MARK else 1)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return signal.Signals(os.WTERMSIG(status)).name
    return f"exit {os.WEXITSTATUS(status)}"


def main(out):
    create = ["ndctl", "create-namespace", "-r", "region0", "-m", "devdax", "-M", "mem", "-a", "1G"]
    verify = run("verify", "--json", "--cross-check", "--record", f"{out}/cxl-mem-1G.jsonl",
                 "--", *create)
    audit = run("audit", "--json", "--record", f"{out}/cxl-mem-1G.audit.jsonl")
    fault = write_first_gib("/dev/dax0.0")
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout.splitlines()
    regions = cxl_list("-R")
    print(json.dumps({"kernel": os.uname().release, "verify": verify, "audit": audit,
                      "fault": fault, "cxl_regions": regions,
                      "warnings": [line for line in dmesg if "WARNING:" in line]}))


if __name__ == "__main__":
    main(sys.argv[1])
