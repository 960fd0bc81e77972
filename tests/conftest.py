import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
KERNELS = FIXTURES / "kernels"


def kernel_root(prefix: str) -> Path:
    """The fixture tree of the one recorded kernel whose release starts with prefix."""
    found = [p for p in KERNELS.iterdir() if p.name.startswith(prefix + ".") or p.name.startswith(prefix + "-")]
    assert len(found) == 1, f"expected one fixture kernel for {prefix}, found {found}"
    return found[0]


def lab_doc(prefix: str) -> dict:
    return json.loads((kernel_root(prefix) / "lab.json").read_text())


@pytest.fixture(params=["5.10", "6.1", "6.12"])
def series(request):
    return request.param


def run_cli(*args, env=None, timeout=3600):
    """The real command line in a subprocess: real exit code, real stderr."""
    import os
    import subprocess
    import sys

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "vmemtrace", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
