"""The built wheel carries what an installed vmemtrace needs to trace: the BPF program as package
data (found where the package is, not in a source tree) and the licence."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_an_installed_wheel_finds_its_bpf_program(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("vmemtrace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "vmemtrace/bpf/vmemtrace.bpf.c" in names
    assert any(n.endswith(".dist-info/LICENSE") for n in names)
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    probe = ("import vmemtrace.probes.loader as l; print(l.BPF_SOURCE); "
             "print(l.BPF_SOURCE.read_text() == open(sys.argv[1]).read())")
    res = subprocess.run([sys.executable, "-c", "import sys; " + probe,
                          str(ROOT / "bpf/vmemtrace.bpf.c")], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    path, same = res.stdout.split()
    assert path.startswith(str(site)) and same == "True"
