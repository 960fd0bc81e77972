import json
import re
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


def recorded_series():
    """The series of every kernel with recorded fixtures ("6.12" for 6.12.117+deb12-amd64):
    adding a kernel is adding its fixtures (scripts/record-fixtures), not editing test lists."""
    return sorted({re.match(r"^(\d+\.\d+)", p.name).group(1) for p in KERNELS.iterdir()},
                  key=lambda s: tuple(map(int, s.split("."))))


SERIES = recorded_series()


@pytest.fixture(params=SERIES)
def series(request):
    return request.param


def lab_json(kernels, *args, returncode=0) -> dict:
    """`vmemtrace lab --json` on these kernel series, one boot each: its documents by series,
    each checked to be the series asked for; the lab's exit code must be `returncode`."""
    res = run_cli("lab", "--json", *args, *(a for k in kernels for a in ("--kernel", k)))
    assert res.returncode == returncode, res.stderr[-3000:]
    docs = [json.loads(line) for line in res.stdout.splitlines()]
    for doc, series in zip(docs, kernels, strict=True):
        assert re.match(re.escape(series) + r"[.-]", doc["kernel"]), (series, doc["kernel"])
    return dict(zip(kernels, docs))


def run_cli(*args, env=None, timeout=3600):
    """The real command line in a subprocess: real exit code, real stderr."""
    import os
    import subprocess
    import sys

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "vmemtrace", *args], capture_output=True,
                          text=True, env=full_env, timeout=timeout)
