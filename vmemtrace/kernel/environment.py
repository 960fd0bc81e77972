"""What the tracer itself needs around the kernel: privileges, BTF, headers for BCC, bcc."""

import os
from pathlib import Path

# CAP_SYS_RAWIO is bit 17, CAP_SYS_ADMIN bit 21, CAP_BPF bit 39, CAP_PERFMON bit 38
# (include/uapi/linux/capability.h).
CAP_SYS_RAWIO = 17
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def parse_cap_eff(status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def effective_caps(root: Path) -> int | None:
    """The effective capabilities of the process that reads `root`: this process's for "/"
    (all of them for uid 0); for another tree (`check --root`, a recorded kernel) what the tree's
    proc/self/status says, None when it does not say: the tree describes a kernel, not the
    privileges of whoever reads it now."""
    live = str(root) == "/"
    if live and os.geteuid() == 0:
        return ~0
    try:
        return parse_cap_eff((root / "proc/self/status").read_text(errors="replace"))
    except (OSError, ValueError):
        return 0 if live else None


def privileged(root: Path) -> bool:
    """Root, or CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON (what kprobe+BPF asks);
    a tree that does not say is taken as read by root."""
    caps = effective_caps(root)
    if caps is None:
        return True
    if caps & (1 << CAP_SYS_ADMIN):
        return True
    return bool(caps & (1 << CAP_BPF)) and bool(caps & (1 << CAP_PERFMON))


def btf_path(root: Path) -> str | None:
    path = root / "sys/kernel/btf/vmlinux"
    return "/sys/kernel/btf/vmlinux" if path.exists() else None


def headers_path(root: Path, release: str) -> str | None:
    """BCC compiles against /lib/modules/<release>/build, or the in-kernel kheaders archive."""
    build = root / "lib/modules" / release / "build"
    if (build / "include").is_dir():
        return f"/lib/modules/{release}/build"
    if (root / "sys/kernel/kheaders.tar.xz").exists():
        return "/sys/kernel/kheaders.tar.xz"
    return None


def bcc_version() -> str | None:
    """Debian's python3-bpfcc, if importable from this interpreter (bcc/version.py, there since
    bcc 0.10; asking the package metadata costs importlib.metadata, 0.5 s of start-up under TCG)."""
    try:
        import bcc
    except Exception:  # an unusable bcc (missing libbcc.so) raises more than ImportError
        return None
    return str(getattr(bcc, "__version__", "unknown"))


def lockdown_mode(root: Path) -> str | None:
    """The active mode of the lockdown LSM ("none", "integrity", "confidentiality"), None when
    it is not there (security/lockdown/lockdown.c shows the active one in brackets)."""
    try:
        text = (root / "sys/kernel/security/lockdown").read_text(errors="replace")
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None
