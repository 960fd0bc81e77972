"""Runs inside a lab guest (python3 tests/lab/guest_layout.py): is the struct layout read from the
kernel's BTF the one its headers give? BCC compiles bpf/vmemtrace.bpf.c (every probe function) with the
BTF layout and LAYOUT_CHECK (static assertions against the headers) and the kernel's verifier
loads each function; then once more with one offset moved, which must not compile, and once
with the layout from the headers (LAYOUT_FROM_HEADERS, for kernels without BTF), whose functions
the verifier loads too. The build with the BTF layout alone is the first one without its static
assertions: compiling it again would tell nothing more. Prints one JSON document.

Driven by tests/lab/test_lab_e2e_tools.py; the assertions live there.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, SRC)

from vmemtrace.kernel import btf, environment, release  # noqa: E402
from vmemtrace.probes import program  # noqa: E402
from vmemtrace.probes.targets import PROGRAMS  # noqa: E402

RELEASE = release.read_release(Path("/"))


def program_defines(layout):
    """The program's -D flags as vmemtrace would compile it here, with this layout."""
    return program.defines(release.parse_version(RELEASE), Path(f"/lib/modules/{RELEASE}/build"),
                          layout)[0]


def program_sources(layout):
    return program.defines(release.parse_version(RELEASE), Path(f"/lib/modules/{RELEASE}/build"),
                          layout)[1]


def compile_and_load(cflags):
    """Child process: compile, then load every function through the verifier."""
    from bcc import BPF

    start = time.monotonic()
    b = BPF(src_file=str(program.BPF_SOURCE), cflags=program.compile_flags(cflags))
    seconds = time.monotonic() - start
    loaded = []
    for fn in PROGRAMS:
        b.load_func(fn, BPF.KPROBE)
        loaded.append(fn)
    print(json.dumps({"seconds": seconds, "loaded": sorted(loaded)}))


def child(cflags):
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(cflags)],
                         capture_output=True, text=True)
    doc = json.loads(res.stdout) if res.returncode == 0 else {}
    doc.update(ok=res.returncode == 0, errors=[l for l in res.stderr.splitlines() if "error" in l])
    return doc


def main():
    layout = btf.read_layout(environment.btf_path(Path("/")))
    moved = dataclasses.replace(layout, pgmap_flags=layout.pgmap_flags + 4)
    print(json.dumps({
        "kernel": RELEASE,
        "layout": dataclasses.asdict(layout),
        "facts_from": program_sources(layout),
        "facts_from_headers": program_sources(None),
        "checked": child(program_defines(layout) + ["-DLAYOUT_CHECK"]),
        "moved": child(program_defines(moved) + ["-DLAYOUT_CHECK"]),
        "headers": child(program_defines(None)),
    }))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        compile_and_load(json.loads(sys.argv[2]))
    else:
        main()
