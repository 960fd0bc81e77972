"""The installed package checked inside a `lab --systemd` guest, once its unit has run and
stopped (tests/lab/guest_systemd.py calls report()): the .deb's man pages and unit files, two
lab cases verified by /usr/bin/vmemtrace, and the wheel installed into a fresh venv verifying one,
each away from the mounted source tree. The assertions live in tests/lab/test_lab_e2e_systemd.py.
"""

import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, "/opt/vmemtrace")
from vmemtrace.lab import deb  # noqa: E402  (the lab's environment for a command, not the tool)
from vmemtrace.lab.cases import CASES  # noqa: E402  (only the table of cases, not the tool)

DIST = "/opt/vmemtrace/dist"
CLEAN_ENV = dict(deb.CLEAN_ENV)
# The lab's speed-ups only (BCC's libraries and Python's bytecode in tmpfs, lab/libdisk.py and
# lab/runner.py): they change where files are read from, not which.
CLEAN_ENV.update({k: os.environ[k] for k in ("LD_LIBRARY_PATH", "PYTHONPYCACHEPREFIX") if k in os.environ})
# What an installed tool adds to the lab's cases is where it runs from, not how the kernel builds
# the vmemmap (tests/lab/test_lab_e2e.py verifies every case on every kernel): the .deb verifies a
# case the kernel optimises and one it does not, the wheel, the same modules, the first of them.
DEB_CASES = ("mem-2M", "mem-4K")
WHEEL_CASES = DEB_CASES[:1]


def sh(*cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, env=CLEAN_ENV, cwd="/", **kw)


def cases(exe, names=DEB_CASES):
    if not os.path.exists(exe):
        return {}  # not installed: the test says so, with apt's or pip's own words
    out = {}
    for name in names:
        case = CASES[name]
        sh("ndctl", "disable-namespace", "namespace0.0")
        res = sh(exe, "verify", "--json", "--", *case.ndctl_args("namespace0.0"))
        doc = json.loads(res.stdout) if res.stdout.strip() else {}
        out[name] = {"exit": res.returncode, "verdict": doc.get("verdict"),
                     "err": res.stderr.strip().splitlines()[-1:],
                     "devices": [{k: d[k] for k in ("device", "vmemmap_pages",
                                                    "struct_pages_initialized")}
                                 for d in doc.get("devices", [])]}
    return out


def where(exe):
    """Which vmemtrace module and BPF program the installed command uses (check --json)."""
    if not os.path.exists(exe):
        return {"bpf_program": None, "can_trace": None, "module": f"{exe} is missing"}
    res = sh(exe, "check", "--json")
    doc = json.loads(res.stdout) if res.stdout.strip() else {}
    # The interpreter beside the command: the venv's for the wheel, /usr/bin's for the .deb.
    mod = sh(os.path.join(os.path.dirname(exe), "python3"), "-c",
             "import vmemtrace; print(vmemtrace.__file__)")
    return {"bpf_program": doc.get("bpf_program"), "can_trace": doc.get("can_trace"),
            "module": mod.stdout.strip()}


def report():
    """What the installed package holds and does (the lab installed the .deb with apt)."""
    (wheel,) = glob.glob(f"{DIST}/vmemtrace-*.whl")
    man = sh("man", "-P", "cat", "vmemtrace-verify")
    unit_file = "/lib/systemd/system/vmemtrace-exporter.service"
    unit = open(unit_file).read() if os.path.exists(unit_file) else ""
    out = {"man_exit": man.returncode, "man": man.stdout.splitlines()[:12],
           "unit_files": sorted(glob.glob("/lib/systemd/system/vmemtrace*")),
           "unit_exec": [line for line in unit.splitlines() if line.startswith("ExecStart")],
           "default": os.path.exists("/etc/default/vmemtrace-exporter"),
           "deb": {"where": where("/usr/bin/vmemtrace"), "cases": cases("/usr/bin/vmemtrace")}}
    venv = sh("/usr/bin/python3", "-m", "venv", "--system-site-packages", "/tmp/venv")
    # --ignore-installed: the .deb's vmemtrace in the system site-packages (which the venv sees,
    # for BCC) would otherwise satisfy the requirement and pip would install nothing.
    pip = sh("/tmp/venv/bin/pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
             wheel)
    out["venv_exit"], out["pip_exit"], out["pip_err"] = venv.returncode, pip.returncode, pip.stderr[-2000:]
    # The .deb is still installed: the venv's module must win in the venv, which is what it is for.
    out["wheel"] = {"where": where("/tmp/venv/bin/vmemtrace"), "cases": cases("/tmp/venv/bin/vmemtrace", WHEEL_CASES)}
    return out
