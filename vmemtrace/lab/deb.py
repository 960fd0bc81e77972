"""The .deb built from the checkout (host side) and installed in a guest with its unit running.

`lab --systemd` boots systemd as PID 1; the guest installs the package as a user's host would
(`apt install ./vmemtrace_*.deb`, then `systemctl enable --now`), so the unit that runs is the
one the package ships, under the sandbox it declares.
"""

import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from vmemtrace.errors import VmemtraceError

UNIT = "vmemtrace-exporter.service"
# What apt and dpkg write, where the guest's root (9p, shared by every boot) must stay as it
# is. Not /var itself: the lab's results directory is mounted below it.
WRITTEN = ("/usr", "/etc", "/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt", "/var/log")
# A user's shell, not the lab's: the installed tool must not see the mounted source tree.
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}


def build(project: Path, out: Path) -> Path:
    """Build the .deb from the checkout into out (scripts/build-deb); its path."""
    script = project / "scripts" / "build-deb"
    if not script.exists():
        raise VmemtraceError(f"--systemd builds the .deb from a source checkout: {script} is "
                             "missing (run the lab from the project's tree)")
    for old in out.glob("vmemtrace_*_all.deb"):
        old.unlink()
    proc = subprocess.run([str(script), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        log = out / "build-deb.log"
        log.write_text(proc.stdout + proc.stderr)
        tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise VmemtraceError(f"cannot build the .deb for --systemd: {tail} (whole log: {log})")
    (deb,) = out.glob("vmemtrace_*_all.deb")
    return deb


def overlay_writable_dirs() -> None:
    """Writable layers (tmpfs, gone at power-off) over what installing a package writes."""
    subprocess.run(["modprobe", "overlay"], check=False)
    # Upper layers on a tmpfs of their own: the guest's /tmp is itself an overlay.
    os.makedirs("/tmp/ov", exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "ov", "/tmp/ov"], check=True)
    for i, d in enumerate(WRITTEN):
        # virtme-ng already lays writable overlays on some (/etc, /var, /tmp); a directory
        # apt creates (the lab root has no /var/cache/apt) is made in those.
        if not os.path.isdir(d) or os.access(d, os.W_OK):
            continue
        up, work = f"/tmp/ov/{i}/up", f"/tmp/ov/{i}/work"
        os.makedirs(up)
        os.makedirs(work)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={d},upperdir={up},workdir={work}", d], check=True)


def install(directory: str) -> subprocess.CompletedProcess:
    """`apt install ./vmemtrace_*.deb` of the one package in directory (its dependencies are
    in the lab root; nothing is downloaded)."""
    (deb,) = glob.glob(f"{directory}/vmemtrace_*_all.deb")
    # apt 2.6 takes a local file only as a relative or ./ path ("Pathname to install is not
    # absolute" otherwise with --no-download).
    shutil.copy(deb, "/tmp")
    return subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                           "./" + os.path.basename(deb)], capture_output=True, text=True,
                          env=CLEAN_ENV, cwd="/tmp")


def systemctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, env=CLEAN_ENV)


def journal(lines: int = 20) -> list[str]:
    proc = subprocess.run(["journalctl", "-u", UNIT, "-n", str(lines), "--no-pager", "-o", "cat"],
                          capture_output=True, text=True, env=CLEAN_ENV)
    return proc.stdout.splitlines()


def enable_and_start(timeout: float = 60) -> dict:
    """`systemctl enable --now` the package's unit, as its README tells a user; what systemd
    says of it once it is active (or why it is not)."""
    systemctl("daemon-reload")
    enable = systemctl("enable", "--now", UNIT)
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = systemctl("is-active", UNIT).stdout.strip()
        if state in ("active", "failed"):
            break
        time.sleep(0.5)
    return {"enable_exit": enable.returncode, "enable_err": enable.stderr.strip(),
            "state": state, "enabled": systemctl("is-enabled", UNIT).stdout.strip(),
            "pid1": os.readlink("/proc/1/exe"), "journal": journal()}


def install_and_start(directory: str) -> dict:
    """The package from directory installed and its unit started; raises with apt's or
    systemd's words where either fails."""
    if os.path.basename(os.readlink("/proc/1/exe")) != "systemd":
        raise RuntimeError(f"PID 1 is {os.readlink('/proc/1/exe')}, not systemd")
    overlay_writable_dirs()
    apt = install(directory)
    if apt.returncode != 0:
        raise RuntimeError(f"apt install of the .deb failed: {apt.stderr.strip()[-500:]}")
    unit = enable_and_start()
    if unit["state"] != "active":
        raise RuntimeError(f"{UNIT} is {unit['state'] or 'unknown'} after enable --now: "
                           + " | ".join(unit["journal"][-5:] or [unit["enable_err"]]))
    return unit
