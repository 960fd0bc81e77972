"""Booting the guest: virtme-ng (vng) over qemu, TCG by default.

KVM on this project's machines is a nested hypervisor on which stock Debian kernels hang after
the decompressor (docs/kernels.md), so KVM is used only after a probe boot showed it works; the
verdict is cached per host and guest kernel.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError
from vmemtrace.lab import libdisk
from vmemtrace.lab.cases import Region
from vmemtrace.lab.image import GUEST_BUILD, GUEST_OUT, GUEST_SRC, GuestKernel
from vmemtrace.lab.nfit import Pmem
from vmemtrace.lab.steps import say

CONSOLE_TAIL = 25


@dataclass
class Boot:
    returncode: int | None  # None when it timed out or hung after a panic
    console: Path
    panicked: bool = False

    def started(self) -> bool:
        """Whether the guest got as far as running the lab's script (virtme-ng's init says so)."""
        try:
            return STARTED in self.console.read_bytes()
        except OSError:
            return False

    def tail(self, n: int = CONSOLE_TAIL) -> list[str]:
        try:
            lines = self.console.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return lines[-n:]


PANICS = (b"PANIC: early exception", b"Kernel panic - not syncing")
STARTED = b"virtme-ng-init: starting script"


def _panicked(console: Path) -> bool:
    """A guest kernel that panicked before panic= took effect would hang until the timeout."""
    try:
        with open(console, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            tail = fh.read()
    except OSError:
        return False
    return any(p in tail for p in PANICS)


def tool_path(name: str) -> str | None:
    """vng is installed next to this interpreter (the venv), or on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def require_tools() -> str:
    if shutil.which("qemu-system-x86_64") is None:
        raise VmemtraceError("qemu-system-x86_64 not found (apt install qemu-system-x86)")
    vng = tool_path("vng")
    if vng is None:
        raise VmemtraceError("vng not found (pip install virtme-ng)")
    return vng


def boot(kernel: GuestKernel, src: Path, out: Path, exec_cmd: str | None,
         region: Pmem, console: Path, accel: str = "tcg", cpus: int = 2,
         timeout: float | None = 900, append: str = "", systemd: bool = False) -> Boot:
    """Boot once, run exec_cmd (None: an interactive shell), power off. Files the guest's
    persistent memory needs (NVDIMMs' backing) live beside the console log for the boot.
    systemd: the root's systemd as PID 1 (vng runs exec_cmd from its serial getty)."""
    with region.backed(console.parent):
        return _boot(kernel, src, out, exec_cmd, region, console, accel, cpus, timeout, append,
                     systemd)


def _boot(kernel, src, out, exec_cmd, region, console, accel, cpus, timeout, append,
          systemd) -> Boot:
    vng = require_tools()
    cmd = [vng, "--root", str(kernel.root), "--run", str(kernel.image), "--memory",
           f"{region.guest_memory() >> 20}M", "--cpus", str(cpus),
           f"--rodir={GUEST_SRC}={src}", f"--rwdir={GUEST_OUT}={out}",
           # 9p: virtiofsd, where installed, fails in this kind of container and costs seconds.
           "--force-9p"]
    if region.kernel_args():
        cmd += ["--append", region.kernel_args()]
    if kernel.headers is not None:  # a kernel you built: BCC compiles against its build tree
        cmd.append(f"--rodir={GUEST_BUILD}={kernel.headers}")
    if append:  # e.g. no5lvl: 4-level paging although TCG's -cpu max offers LA57
        cmd += ["--append", append]
    if accel == "tcg":
        cmd.append("--disable-kvm")
    if systemd:
        cmd.append("--systemd")
    # The library disk first: a PCI device without bus= goes to the newest bus, which the CXL
    # host bridge would be, and it takes only bridges.
    opts = libdisk.qemu_opts(kernel.libraries) + region.qemu_opts(accel, console.parent)
    if opts:  # one argument: vng's parser takes a value starting with "-" only after "="
        cmd.append("--qemu-opts=" + " ".join(opts))
    env = dict(os.environ)
    # vng runs virtme-run from the same bin directory.
    env["PATH"] = f"{Path(vng).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    if exec_cmd is None:
        return Boot(subprocess.call(cmd, env=env), console)
    cmd += ["--verbose", "--exec", exec_cmd]
    with open(console, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + (timeout or 1e9)
            while time.monotonic() < deadline:
                try:
                    # A kernel that panicked and then rebooted (panic=) exits too: say so.
                    code = proc.wait(timeout=2)
                    return Boot(code, console, panicked=_panicked(console))
                except subprocess.TimeoutExpired:
                    if _panicked(console):
                        return Boot(None, console, panicked=True)
            return Boot(None, console)
        finally:
            # Whatever happened (timeout, Ctrl-C, SIGTERM), no qemu is left running.
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def choose_accel(requested: str, kernel: GuestKernel, src: Path, workdir: Path,
                 cache: Path) -> str:
    if requested != "auto":
        return requested
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    verdict_file = cache / f"kvm-probe-{os.uname().release}-{kernel.release}"
    if verdict_file.exists():
        return verdict_file.read_text().strip()
    say(f"probing whether KVM boots {kernel.release} (once; the answer is cached)")
    out = workdir / "kvm-probe"
    out.mkdir(exist_ok=True)
    result = boot(kernel, src, out, f"touch {GUEST_OUT}/booted", Region(1 << 30),
                  workdir / "kvm-probe.console", accel="kvm", timeout=30)
    verdict = "kvm" if result.returncode == 0 and (out / "booted").exists() else "tcg"
    say(f"KVM {'boots' if verdict == 'kvm' else 'does not boot'} {kernel.release}: using {verdict}")
    verdict_file.write_text(verdict + "\n")
    return verdict
