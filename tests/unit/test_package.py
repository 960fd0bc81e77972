"""The built wheel and .deb carry what an installed vmemtrace needs to trace: the BPF program as
package data (found where the package is, not in a source tree) and the licence; the .deb also
the man pages, the exporter's unit and the dashboards. Installing them in a guest and tracing
with them: tests/lab/test_lab_e2e_systemd.py."""

import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from vmemtrace.output.manual import RUNBOOK

ROOT = Path(__file__).resolve().parents[2]


def test_an_installed_wheel_finds_its_bpf_program(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = (tmp_path / "dist").glob("vmemtrace-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"vmemtrace/bpf/vmemtrace.bpf.c", "vmemtrace/bpf/vmemtrace.h"} <= set(names)
    assert any(n.endswith(".dist-info/LICENSE") for n in names)
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                          str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    probe = ("import vmemtrace.probes.program as l; print(l.BPF_SOURCE); "
             "print(l.BPF_SOURCE.read_text() == open(sys.argv[1]).read())")
    res = subprocess.run([sys.executable, "-c", "import sys; " + probe,
                          str(ROOT / "bpf/vmemtrace.bpf.c")], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    path, same = res.stdout.split()
    assert path.startswith(str(site)) and same == "True"


def test_the_sdist_is_the_whole_source_release(tmp_path):
    """Built from the committed tree as a release would be: it can rebuild the .deb and run
    the tests."""
    src = tmp_path / "src"
    src.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout
    subprocess.run(["tar", "-c", "--null", "-T", "-", "-f", str(tmp_path / "tree.tar")],
                   input=files, cwd=ROOT, check=True)
    subprocess.run(["tar", "-x", "-f", str(tmp_path / "tree.tar"), "-C", str(src)], check=True)
    res = subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                          "print(build_meta.build_sdist(sys.argv[1]))", str(tmp_path / "dist")],
                         cwd=src, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    sdist = tmp_path / "dist" / res.stdout.split()[-1]
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for needed in ("tests/unit/test_package.py", "tests/fixtures/events/sealed/README",
                   "man/vmemtrace.8", "dashboards/alerts.yml", "deploy/daemonset.yaml",
                   "debian/control", "debian/rules", "docs/design.md", "bpf/vmemtrace.h",
                   "bpf/vmemtrace.bpf.c", "scripts/build-deb", "scripts/test.sh", ".ci/run",
                   "CHANGELOG.md", "README.md", "LICENSE"):
        assert needed in names, needed
    assert not any("__pycache__" in n for n in names)


def test_the_deb_builds_and_holds_what_it_promises(tmp_path):
    res = subprocess.run([str(ROOT / "scripts/build-deb"), str(tmp_path)], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    (deb,) = tmp_path.glob("vmemtrace_*_all.deb")
    info = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                          text=True, check=True).stdout
    depends = {d.strip().split()[0] for d in info.split(",")}
    assert {"python3-bpfcc", "python3-click", "python3-tabulate",
            "python3-prometheus-client", "procps"} <= depends
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    files = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    pages = {f"/usr/share/man/man8/{p.name}.gz" for p in (ROOT / "man").glob("*.8")}
    assert len(pages) == 10 and pages <= files
    assert {"/usr/bin/vmemtrace", "/usr/lib/python3/dist-packages/vmemtrace/bpf/vmemtrace.bpf.c",
            "/usr/lib/python3/dist-packages/vmemtrace/bpf/vmemtrace.h",
            "/lib/systemd/system/vmemtrace-exporter.service", "/etc/default/vmemtrace-exporter",
            "/usr/share/vmemtrace/dashboards/vmemtrace.json",
            "/usr/share/vmemtrace/dashboards/alerts.yml",
            "/usr/share/doc/vmemtrace/copyright", RUNBOOK,
            "/usr/share/bash-completion/completions/vmemtrace"} <= files
    # Not enabled on install: no link into multi-user.target.wants, no start in postinst.
    assert not any("wants" in f for f in files)
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                               check=True).stdout
    ctrl = tarfile.open(fileobj=io.BytesIO(conffiles))
    names = {m.name.lstrip("./") for m in ctrl.getmembers()}
    assert "conffiles" in names
    assert b"/etc/default/vmemtrace-exporter" in ctrl.extractfile("./conffiles").read()
    if "postinst" in names:
        assert b"deb-systemd-invoke start" not in ctrl.extractfile("./postinst").read()
