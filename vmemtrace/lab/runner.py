"""Host side of `vmemtrace lab`: prepare the cache, boot each kernel, run the cases, report."""

import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import vmemtrace
from vmemtrace.errors import EXIT_CANNOT, EXIT_FAIL, EXIT_OK, VmemtraceError
from vmemtrace.lab import deb, image, vm
from vmemtrace.lab.cases import Case, hugetlb_cma_args
from vmemtrace.lab.guest import PMEM
from vmemtrace.lab.kernels import KernelSpec
from vmemtrace.lab.nfit import Pmem
from vmemtrace.lab.steps import say, step
from vmemtrace.lab.tables import case_table
from vmemtrace.output import render

KEEP_RUNS = 20
# A run whose console was written this recently may be a lab running beside this one: kept.
BUSY_SECONDS = 3600


def project_root() -> Path:
    """The tree the guest mounts: vmemtrace/ and bpf/ as in this checkout."""
    root = Path(vmemtrace.__file__).resolve().parent.parent
    if not (root / "bpf").is_dir():
        raise VmemtraceError(f"{root} is not a vmemtrace checkout (no bpf/): "
                             "install with `pip install -e .` from the source tree")
    return root


def _last_written(run: Path) -> float:
    console = run / "console.log"
    return max(run.stat().st_mtime, console.stat().st_mtime if console.exists() else 0)


def _new_workdir(cache: Path, release: str) -> Path:
    """A fresh directory for one boot, named by its start time, unique among labs that run at
    once; the oldest runs beyond KEEP_RUNS are removed unless another lab may still be using them."""
    runs = cache / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-KEEP_RUNS]:
        with contextlib.suppress(OSError):
            if _last_written(old) < time.time() - BUSY_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{time.strftime('%Y%m%d-%H%M%S')}-{release}-", dir=runs))
    workdir.chmod(0o755)
    (workdir / "out").mkdir()
    return workdir


COMMAND_FILE = "command.sh"
GUEST_PYCACHE = "/run/vmemtrace-pycache"  # tmpfs in a virtme-ng guest


def guest_command(cases: list[Case], command: str | None = None, seconds: float = 1200,
                  pmem: str = "e820", systemd: bool = False) -> str:
    # An --exec command travels as a file in the results directory: vng passes the guest
    # command on the kernel command line, and a long one overflows it (2048 bytes on x86: the
    # kernel dies with an early exception while parsing it).
    what = (f"--exec-file {image.GUEST_OUT}/{COMMAND_FILE}" if command is not None
            else "--cases " + ",".join(c.name for c in cases))
    # Bytecode goes to the guest's tmpfs: the project is mounted read-only, and reading the root's
    # own .pyc files over 9p costs more than compiling them once per boot (docs/kernels.md).
    return (f"env PYTHONPATH={image.GUEST_SRC} PYTHONPYCACHEPREFIX={GUEST_PYCACHE} /usr/bin/python3 "
            f"-m vmemtrace.lab.guest {what} --pmem {pmem} --out {image.GUEST_OUT}/result.json "
            # each command in the guest may take most of the guest's time, and the rest is left
            # to report it
            f"--command-timeout {int(seconds * 0.9)}" + (" --systemd" if systemd else ""))


def _fail_with_console(boot: vm.Boot, message: str):
    for line in boot.tail():
        say(f"console| {line}")
    raise VmemtraceError(f"{message} (full console: {boot.console})")


def run_kernel(kernel, cases: list[Case], region: Pmem, accel: str, cache: Path,
               timeout: float, command: str | None = None, append: str = "",
               package: Path | None = None, cpus: int = 2) -> dict:
    """Boot kernel once for the cases or the command; the guest's result document.
    package: a .deb the guest installs, its unit started under systemd as PID 1, first."""
    src = project_root()
    workdir = _new_workdir(cache, kernel.release)
    accel = vm.choose_accel(accel, kernel, src, workdir, cache)
    if command is not None:
        (workdir / "out" / COMMAND_FILE).write_text(command + "\n")
    if package is not None:
        shutil.copy(package, workdir / "out")
    append = " ".join(a for a in (append, hugetlb_cma_args(cases)) if a)
    what = (f"`{command if len(command) < 60 else command[:57] + '...'}`" if command is not None
            else f"cases {', '.join(c.name for c in cases)}")
    for attempt in (1, 2):
        with step(f"booting {kernel.release} ({accel}) with {region.describe()}, {what}"):
            boot = vm.boot(kernel, src, workdir / "out",
                           guest_command(cases, command, timeout, region.kind, package is not None),
                           region, workdir / "console.log", accel=accel, cpus=cpus,
                           timeout=timeout, append=append, systemd=package is not None)
        # Under TCG a guest kernel now and then oopses on an int3 while it patches its own text
        # during early boot (seen once in about ten 7.3 boots): before anything of ours ran,
        # that is the emulator's doing, and one more boot is the cure.
        if not (boot.panicked and not boot.started() and attempt == 1):
            break
        say(f"the {kernel.release} guest kernel panicked while booting, before the lab's script "
            f"started; booting it once more (console kept in {workdir}/console.1.log)")
        (workdir / "console.log").rename(workdir / "console.1.log")
    result = workdir / "out" / "result.json"
    if boot.panicked:
        _fail_with_console(boot, f"the {kernel.release} guest kernel panicked")
    if boot.returncode is None:
        _fail_with_console(boot, f"the {kernel.release} guest did not finish in {timeout:.0f}s")
    if not result.exists():
        _fail_with_console(boot, f"the {kernel.release} guest did not boot or crashed "
                                 f"(vng exit {boot.returncode})")
    doc = json.loads(result.read_text())
    if doc.get("error"):
        _fail_with_console(boot, f"in the {kernel.release} guest: {doc['error']}")
    doc["accel"] = accel
    doc["run_dir"] = str(workdir)  # the event logs of each case are kept there
    return doc


def run_lab(specs: list[KernelSpec], cases: list[Case], region: Pmem, accel: str, refresh: bool,
            as_json: bool, shell: bool, timeout: float, command: str | None = None,
            append: str = "", systemd: bool = False, cpus: int = 2) -> int:
    vm.require_tools()
    cache = image.cache_dir()
    kernels = image.prepare(specs, refresh, cache)
    if shell:
        kernel = kernels[0]
        say(f"shell in {kernel.release}: the project is at {image.GUEST_SRC}; try "
            f"`modprobe -a {' '.join(PMEM[region.kind].modules)}; cd {image.GUEST_SRC}; "
            "python3 -m vmemtrace check`")
        workdir = _new_workdir(cache, kernel.release)
        vm.boot(kernel, project_root(), workdir / "out", None, region, workdir / "console.log",
                accel="tcg" if accel == "auto" else accel, cpus=cpus, append=append)
        return EXIT_OK
    if command is not None:
        package = None
        if systemd:
            with step("building the .deb from the checkout (scripts/build-deb)"):
                package = deb.build(project_root(), cache / "deb")
        worst = EXIT_OK
        for kernel in kernels:
            doc = run_kernel(kernel, cases, region, accel, cache, timeout, command, append, package,
                             cpus)
            sys.stdout.write(doc["stdout"])
            sys.stderr.write(doc["stderr"])
            sys.stdout.flush()
            say(f"the command exited {doc['exit']} on {doc['kernel']}")
            worst = worst or doc["exit"]
        return worst
    problems = [p for p in (image.device_dax_problem(k, region.config) for k in kernels) if p]
    if problems:
        raise VmemtraceError(problems[0])
    worst = EXIT_OK
    for kernel in kernels:
        doc = run_kernel(kernel, cases, region, accel, cache, timeout, append=append, cpus=cpus)
        verdicts = [c[k]["verdict"] for c in doc["cases"] for k in ("result", "audit", "free")
                    if k in c]
        if any(v in ("error", "incomplete") for v in verdicts):
            worst = max(worst, EXIT_CANNOT)
        elif any(v != "pass" for v in verdicts):
            worst = max(worst, EXIT_FAIL)
        if as_json:
            # One document per kernel, one per line: each is docs/design.md's lab schema.
            print(render.json_line(doc), flush=True)
        else:
            print(f"\n=== {doc['kernel']} ({doc['accel']}) ===\n")
            if doc.get("check"):
                print(render.check_table(doc["check"]) + "\n")
            print(case_table(doc), flush=True)
    return worst
