"""`vmemtrace lab`: the click command (kept apart so the guest never imports host-only code)."""

import sys

import click

from vmemtrace.errors import VmemtraceError
from vmemtrace.lab.cases import DEFAULT_CASES, Region, parse_cases, parse_size, parse_start
from vmemtrace.lab.cxl import WINDOW_START, CxlMemory
from vmemtrace.lab.nfit import Nvdimms


def memory(pmem: str, size: int, start):
    if pmem == "e820":
        return Region(size, start)
    if pmem == "cxl":
        return CxlMemory(size, WINDOW_START if start is None else start)
    if start is not None:
        raise VmemtraceError("--pmem-start places the memmap= region: qemu places NVDIMMs "
                             "itself (after guest RAM)")
    return Nvdimms(size)


@click.command()
@click.option("--kernel", "kernel_specs", multiple=True, default=("6.12",), show_default=True,
              help="5.10, 6.1, 6.12, 7.3 (Debian's newest build of that series, from whichever "
                   "suite carries it), a Debian package linux-image-<release>, or a kernel image "
                   "path; repeatable")
@click.option("--modules", help="with --kernel PATH: its lib/modules/<release> directory")
@click.option("--headers", help="with --kernel PATH: its build tree, for BCC in the guest "
                                "(default: the modules directory's build link)")
@click.option("--case", "case_list", default=",".join(DEFAULT_CASES), show_default=True,
              help="comma-separated namespace cases; multi (with --pmem nfit): mem-2M and "
                   "dev-2M in one region, mem-1G in the other at the same time, one verify; "
                   "multi-kprobe: the same devices made first, bound all at once under verify "
                   "--attach kprobe; hvo-1G, hvo-2M, hvo-off-2M: hugetlb pages allocated, "
                   "audited and freed with HVO on (off)")
@click.option("--pmem", type=click.Choice(["e820", "nfit", "cxl"]), default="e820", show_default=True,
              help="the guest's persistent memory: e820, one memmap= region with one namespace; "
                   "nfit, two of qemu's ACPI NVDIMMs (sparse files in the lab cache) whose "
                   "label-based regions hold several namespaces (needed by the multi case); "
                   "cxl, a CXL type 3 device behind a CXL host bridge, of which `cxl "
                   "create-region` makes a persistent region (kernels with CXL regions: 6.0+)")
@click.option("--size", default="3G", show_default=True,
              help="persistent memory region (and namespace) size, up to 1T and beyond; with "
                   "--pmem nfit each NVDIMM's, with --pmem cxl the CXL device's (a multiple of "
                   "256M) (qemu's RAM for a large region is not reserved: the host needs only "
                   "what the guest touches)")
@click.option("--pmem-start", default="auto", show_default=True, metavar="ADDRESS",
              help="guest physical address where the region starts (auto: 5G, or 1026G for a "
                   "region too large to end below qemu's HyperTransport hole at 1012G); one that "
                   "is not a multiple of 128M shares the region's first and last memory sections "
                   "with boot RAM; with --pmem cxl, where the CXL window (and so the region) "
                   "starts, a multiple of 256M (auto: 9G; 9472M puts it off 1 GiB alignment)")
@click.option("--accel", type=click.Choice(["auto", "tcg", "kvm"]), default="auto",
              show_default=True, help="auto: KVM only if a probe boot shows it works")
@click.option("--cpus", type=click.IntRange(1, 64), default=2, show_default=True,
              envvar="VMEMTRACE_LAB_CPUS", show_envvar=True,
              help="virtual CPUs per guest; under TCG each one busy takes a host core, so two "
                   "labs side by side on 2 cores run best with 1 each")
@click.option("--refresh", is_flag=True, help="refresh the guest's package lists first")
@click.option("--timeout", type=float, help="seconds per guest  [default: 1200, and 3 more per "
                                             "GiB of --size]")
@click.option("--json", "as_json", is_flag=True,
              help="one JSON document per kernel, one per line")
@click.option("--append", default="", metavar="ARGS",
              help="extra guest kernel command line, e.g. no5lvl for 4-level paging")
@click.option("--shell", is_flag=True, help="boot the first kernel into an interactive shell")
@click.option("--exec", "command", metavar="CMD",
              help="instead of the cases: run this shell command in each guest (device-dax "
                   "drivers loaded, `vmemtrace` on PATH); exit with its status")
@click.option("--systemd", is_flag=True,
              help="with --exec: boot systemd as PID 1, install the .deb built from this "
                   "checkout and `systemctl enable --now` its exporter unit before the command")
def lab(kernel_specs, modules, headers, case_list, pmem, size, pmem_start, accel, cpus, refresh,
        timeout, as_json, append, shell, command, systemd):
    """Boot a throwaway guest with emulated pmem and run the cases in it.

    Exit 0 when every case passed, 1 when one failed, 2 when one could not be verified."""
    from vmemtrace.errors import one_line_errors, terminate_on_sigterm
    from vmemtrace.lab.kernels import parse_spec
    from vmemtrace.lab.runner import run_lab

    if systemd and command is None:
        raise click.UsageError("--systemd runs an --exec command beside the installed unit: "
                               "give --exec CMD")

    @one_line_errors
    def go():
        specs = [parse_spec(s, modules, headers) for s in kernel_specs]
        # SIGTERM unwinds like Ctrl-C, so vm.boot()'s cleanup kills the guest's qemu.
        with terminate_on_sigterm():
            region = memory(pmem, parse_size(size), parse_start(pmem_start))
            sys.exit(run_lab(specs, parse_cases(case_list, pmem), region, accel, refresh, as_json, shell,
                             timeout or region.guest_seconds(), command, append, systemd, cpus))

    go()
