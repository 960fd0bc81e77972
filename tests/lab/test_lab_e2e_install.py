"""End to end: the .deb (scripts/build-deb) installed by apt, and the wheel installed into a
fresh venv, verify the lab's cases in a 6.12 guest (the .deb all four, the wheel two), as
installed, not from the source tree; the .deb brings its man pages and systemd unit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.lab.guest_install import WHEEL_CASES
from vmemtrace.lab.cases import CASES

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed():
    dist = ROOT / "dist"
    for old in list(dist.glob("vmemtrace*.deb")) + list(dist.glob("vmemtrace-*.whl")):
        old.unlink()
    subprocess.run([str(ROOT / "scripts/build-deb")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(ROOT)], check=True, capture_output=True)
    res = run_cli("lab", "--kernel", "6.12", "--exec", "python3 /opt/vmemtrace/tests/lab/guest_install.py")
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


# The lab's 3 GiB region on 6.12, as the source tree's own lab run measures it
# (tests/lab/test_lab_e2e.py): vmemmap pages and struct pages initialised; None: as expected.
MEASURED = {"mem-2M": (3072, 196608), "mem-1G": (6, 384), "dev-2M": (12288, None),
            "mem-4K": (12288, None)}


def test_apt_installs_the_deb_with_its_man_pages_and_unit(installed):
    assert installed["apt_exit"] == 0, installed["apt_err"]
    assert installed["man_exit"] == 0
    assert any("vmemtrace-verify" in line for line in installed["man"][:4]), installed["man"]
    assert installed["unit_files"] == ["/lib/systemd/system/vmemtrace-exporter.service"]
    assert installed["unit_exec"] == ["ExecStart=/usr/bin/vmemtrace exporter $VMEMTRACE_OPTS"]
    assert installed["default"]


@pytest.mark.parametrize("how,prefix", [("deb", "/usr/lib/python3/dist-packages/vmemtrace/"),
                                        ("wheel", "/tmp/venv/lib/")])
def test_the_installed_tool_runs_from_where_it_was_installed(installed, how, prefix):
    assert installed["apt_exit"] == 0, installed["apt_err"]
    if how == "wheel":
        assert installed["venv_exit"] == 0 and installed["pip_exit"] == 0, installed["pip_err"]
    where = installed[how]["where"]
    assert where["module"].startswith(prefix), where
    assert where["bpf_program"].startswith(prefix) and where["bpf_program"].endswith("vmemtrace.bpf.c")
    assert where["can_trace"] is True


@pytest.mark.parametrize("how,case", [("deb", c) for c in sorted(CASES)] +
                         [("wheel", c) for c in WHEEL_CASES])
def test_the_installed_tool_passes_every_case(installed, how, case):
    if how == "wheel":
        assert installed["venv_exit"] == 0 and installed["pip_exit"] == 0, installed["pip_err"]
    assert case in installed[how]["cases"], installed[how]["where"]
    got = installed[how]["cases"][case]
    assert (got["exit"], got["verdict"]) == (0, "pass"), got["err"]
    (dev,) = got["devices"]
    vmemmap, init = MEASURED[case]
    assert dev["vmemmap_pages"]["observed"] == vmemmap
    inits = dev["struct_pages_initialized"]
    assert inits["observed"] == (init if init is not None else inits["expected"])
