"""The lab's other kind of persistent memory: qemu's ACPI NFIT NVDIMMs, as real PMEM servers
describe theirs. Each NVDIMM is one region with a label area, so namespaces are label-based:
several per region, created and destroyed by ndctl as on a host (the memmap= region of
cases.Region is label-less: one namespace, the whole region).

Host side only: the qemu options. The guest's half (labels, regions) is lab/guest.py's Nfit.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmemtrace.lab.cases import GiB, Region, cpu_options
from vmemtrace.lab.cxl import CxlMemory

# qemu's smallest label area (hw/mem/nvdimm.c, MIN_NAMESPACE_LABEL_SIZE): room for the two
# index blocks and a few hundred namespace labels.
LABEL_SIZE = 128 * 1024
# The backing file's alignment, which qemu also uses for the NVDIMM's guest physical address
# (memory_device_get_free_addr() aligns to the memory region's alignment): 1 GiB, so that a
# namespace at the region's start can have 1 GiB compound pages.
ALIGN = GiB
# Guest RAM beside the NVDIMMs: the project, BCC and its compile (as the memmap= guest has),
# and each NVDIMM's vmemmap at 4 KiB compound pages, 64 bytes of struct page per 4 KiB page.
BASE_RAM = 6 * GiB
COUNT = 2  # two regions: the multi case puts two namespaces in one and one in the other


@dataclass(frozen=True)
class Nvdimms:
    """COUNT NVDIMMs of `size` bytes each (a region each, `size` usable by namespaces), backed by
    sparse files in the boot's directory under the lab cache: only the label area and the
    namespaces' info blocks are ever written (devdax with -M mem keeps struct pages in RAM),
    whatever the size."""

    size: int
    count: int = COUNT
    kind = "nfit"  # the guest's name for it (lab/guest.py)
    config = ("ACPI_NFIT",)  # the NVDIMMs' driver, beyond device-dax

    def total(self) -> int:
        return self.size * self.count

    def guest_memory(self) -> int:
        return BASE_RAM + self.total() // 64

    def file_size(self) -> int:
        # qemu takes the label area from the end of the backing file and rounds what is left
        # down to ALIGN (nvdimm_prepare_memory_region()): one ALIGN more keeps `size` whole.
        return self.size + ALIGN

    def files(self, scratch: Path) -> list[Path]:
        return [scratch / f"nvdimm{i}.img" for i in range(self.count)]

    def kernel_args(self) -> str:
        return ""

    def qemu_opts(self, accel: str, scratch: Path) -> list[str]:
        """nvdimm=on and one memory-backend-file + nvdimm device per NVDIMM. qemu places them in
        its device memory area after RAM above 4 GiB, 1 GiB aligned, which -m's maxmem sizes
        (the later -m overrides vng's, which has no slots); each slot adds up to ALIGN of
        padding. Guest RAM is not reserved up front (memory-backend-ram reserve=off)."""
        ram = self.guest_memory()
        maxmem = ram + self.count * (self.file_size() + ALIGN)
        opts = ["-m", f"{ram >> 20}M,slots={self.count},maxmem={maxmem >> 20}M",
                "-machine", "nvdimm=on",
                "-object", f"memory-backend-ram,id=vt-ram,size={ram >> 20}M,reserve=off",
                "-machine", "memory-backend=vt-ram"]
        opts += cpu_options(accel, 4 * GiB + maxmem)
        for i, path in enumerate(self.files(scratch)):
            opts += ["-object", f"memory-backend-file,id=vt-nv{i},share=on,mem-path={path},"
                     f"size={self.file_size() >> 20}M,align={ALIGN >> 20}M",
                     "-device", f"nvdimm,id=vt-nvdimm{i},memdev=vt-nv{i},label-size={LABEL_SIZE}"]
        return opts

    @contextmanager
    def backed(self, scratch: Path) -> Iterator[None]:
        """Fresh sparse files for one boot, their labels blank (the guest initialises them);
        removed after it, whatever happened (a 1 TiB file is sparse, but a backup tool or
        `du --apparent-size` would not know)."""
        try:
            for path in self.files(scratch):
                with open(path, "wb") as fh:
                    fh.truncate(self.file_size())
            yield
        finally:
            for path in self.files(scratch):
                path.unlink(missing_ok=True)

    def guest_seconds(self) -> float:
        return 1200.0 + 3 * (self.total() >> 30)

    def describe(self) -> str:
        return f"{self.count} NFIT NVDIMMs of {self.size >> 20} MiB"


# What a guest's persistent memory can be: the memmap= region, NVDIMMs, or CXL memory.
Pmem = Region | Nvdimms | CxlMemory
