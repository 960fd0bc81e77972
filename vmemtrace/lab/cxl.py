"""The lab's CXL memory: one of qemu's `cxl-type3` devices behind a CXL host bridge, as the
device-dax of new servers comes. The guest makes a persistent-memory region on it with
`cxl create-region`; the region is an nvdimm region (cxl_pmem's bridge) whose label area is the
device's, so namespaces are created and destroyed by ndctl as on NFIT NVDIMMs.

Host side only: the qemu options and where the region lands. The guest's half is lab/guest.py's
Cxl.

Where the region lands decides whether 1 GiB compound pages fit: the kernel allocates a region
from the bottom of its CXL fixed memory window in 256 MiB steps (drivers/cxl/core/region.c,
alloc_hpa(): alloc_free_mem_region(..., SZ_256M, ...)), and qemu 7.2 puts the host bridge
registers (1 MiB) after its device memory area, which starts at the first 1 GiB boundary after
RAM above 4 GiB, and the first window at the next 256 MiB boundary (hw/i386/pc.c,
pc_memory_init(), pc_get_cxl_range_start()). Without memory slots the area is empty, so the
window lands 256 MiB past a 1 GiB boundary; a slot sizes the area to put it anywhere else. The
lab picks guest RAM and the slot so that the window starts where asked.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.errors import VmemtraceError
from vmemtrace.lab.cases import HIGH_RAM, LOW_RAM, GiB, MiB, cpu_options

# The CXL window granularity: fixed memory windows and regions are made of 256 MiB pieces
# (CXL 2.0 8.2.5.12.3, HDM decoder base and size; qemu's cxl-fmw size must be a multiple).
WINDOW_ALIGN = 256 * MiB
# The window's default base: 1 GiB aligned, so a region at its bottom holds 1 GiB compound
# pages, with RAM enough below it for the project, BCC and its compile.
WINDOW_START = 9 * GiB
MIN_HIGH_RAM = 3 * GiB  # guest RAM above 4 GiB
# qemu's device memory area: 1 GiB per slot beyond maxmem - ram (pc_memory_init()).
SLOT_PADDING = GiB
# The device's label storage area (qemu's lsa backend): the index blocks and some labels.
LABEL_SIZE = 256 * 1024
# The PCI bus number of the host bridge: clear of the root complex's own buses.
BUS_NR = 12
# The device's serial number (PCIe Device Serial Number capability): without one qemu's device
# has none, and newer kernels refuse to make an nvdimm region of it (drivers/cxl/pmem.c,
# cxl_pmem_region_probe(): "invalid or missing serial number"; it names the interleave set).
SERIAL = 0x766D656D74726163  # "vmemtrac"


@dataclass(frozen=True)
class CxlMemory:
    """One persistent-memory cxl-type3 device of `size` bytes, the only target of a fixed memory
    window that starts at `start`, backed by a sparse file in the boot's directory (with -M mem
    only info blocks and labels are written)."""

    size: int
    start: int = WINDOW_START
    kind = "cxl"  # the guest's name for it (lab/guest.py)
    # What the guest kernel needs for it: the drivers of the ACPI window, the device, its
    # memory, its nvdimm bridge, and regions (drivers/cxl/Kconfig; regions came in 6.0).
    config = ("CXL_ACPI", "CXL_PCI", "CXL_MEM", "CXL_PMEM", "CXL_REGION")

    def __post_init__(self):
        if self.start % WINDOW_ALIGN:
            raise VmemtraceError(f"--pmem-start {self.start >> 20}M: a CXL window starts on a "
                                 f"{WINDOW_ALIGN >> 20}M boundary")
        lowest = HIGH_RAM + MIN_HIGH_RAM + WINDOW_ALIGN
        if self.start < lowest or 0 < self.device_area() < WINDOW_ALIGN:
            raise VmemtraceError(f"--pmem-start {self.start >> 20}M: the CXL window follows at "
                                 f"least {MIN_HIGH_RAM >> 30} GiB of guest RAM above 4 GiB: start "
                                 f"it at {lowest >> 20}M, or at "
                                 f"{(lowest + SLOT_PADDING + WINDOW_ALIGN) >> 20}M or above")
        if self.size % WINDOW_ALIGN:
            raise VmemtraceError(f"--size {self.size >> 20}M: a CXL device's capacity is whole "
                                 f"{WINDOW_ALIGN >> 20}M pieces")

    def _ram_end(self) -> int:
        """Where RAM above 4 GiB ends (a 1 GiB boundary): right below the window when that lies
        256 MiB past one, else the least RAM the guest needs."""
        if (self.start - WINDOW_ALIGN) % GiB == 0:
            return self.start - WINDOW_ALIGN
        return HIGH_RAM + MIN_HIGH_RAM

    def high_ram(self) -> int:
        return self._ram_end() - HIGH_RAM

    def device_area(self) -> int:
        """maxmem - ram for one memory slot, 0 for none: the slot's 1 GiB and this much sit
        between RAM and the host bridge registers, which end 1 MiB into the window's
        granule before it."""
        return self.start - WINDOW_ALIGN - self._ram_end() - SLOT_PADDING if (
            self.start - WINDOW_ALIGN) % GiB else 0

    def guest_memory(self) -> int:
        return LOW_RAM + self.high_ram()

    def kernel_args(self) -> str:
        """No _OSC control asked of the firmware: granted CXL memory error reporting, 6.12 and
        7.3's cxl_pci sets up event interrupts, which qemu 7.2's device lacks, and fails its
        probe ("Failed to get interrupt for event Info log"): no memdev would come up."""
        return "pcie_ports=compat"

    def files(self, scratch: Path) -> list[Path]:
        return [scratch / "cxl-mem.img", scratch / "cxl-lsa.img"]

    def qemu_opts(self, accel: str, scratch: Path) -> list[str]:
        """cxl=on, a pxb-cxl host bridge with one root port and the type 3 device under it, and
        one fixed memory window targeting that host bridge (docs/system/devices/cxl.rst of
        qemu 7.2: persistent memory is `memdev`, its label area `lsa`)."""
        mem, lsa = self.files(scratch)
        opts = ["-machine", "cxl=on"]
        if self.device_area():  # the later -m overrides vng's
            ram = self.guest_memory()
            opts += ["-m", f"{ram >> 20}M,slots=1,maxmem={(ram + self.device_area()) >> 20}M"]
        opts += ["-object", f"memory-backend-file,id=vt-cxl-mem,share=on,mem-path={mem},"
                            f"size={self.size >> 20}M",
                 "-object", f"memory-backend-file,id=vt-cxl-lsa,share=on,mem-path={lsa},"
                            f"size={LABEL_SIZE >> 10}K",
                 "-device", f"pxb-cxl,bus_nr={BUS_NR},bus=pcie.0,id=vt-cxl.0",
                 "-device", "cxl-rp,port=0,bus=vt-cxl.0,id=vt-cxl-rp0,chassis=0,slot=2",
                 "-device", "cxl-type3,bus=vt-cxl-rp0,memdev=vt-cxl-mem,lsa=vt-cxl-lsa,"
                            f"sn={SERIAL:#x},id=vt-cxl-pmem0",
                 "-machine", f"cxl-fmw.0.targets.0=vt-cxl.0,cxl-fmw.0.size={self.size >> 20}M"]
        # The kernel commits a region only where it can flush CPU caches, which it never
        # assumes under a hypervisor (drivers/cxl/core/region.c,
        # cxl_region_invalidate_memregion(): "Failed to synchronize CPU cache state"); TCG has
        # no caches to flush, so the CPU need not say it is a hypervisor's.
        return opts + cpu_options(accel, self.start + self.size, "hypervisor=off")

    @contextmanager
    def backed(self, scratch: Path) -> Iterator[None]:
        """Fresh sparse files for one boot (a blank label area), removed after it."""
        sizes = (self.size, LABEL_SIZE)
        try:
            for path, size in zip(self.files(scratch), sizes, strict=True):
                with open(path, "wb") as fh:
                    fh.truncate(size)
            yield
        finally:
            for path in self.files(scratch):
                path.unlink(missing_ok=True)

    def guest_seconds(self) -> float:
        return 1200.0 + 3 * (self.size >> 30)

    def describe(self) -> str:
        return f"a CXL type 3 device of {self.size >> 20} MiB (window at {self.start >> 20} MiB)"
