"""Build small /proc/kcore-format images for the walker's unit tests.

An image is what fs/proc/kcore.c serves: an ELF64 ET_CORE file with one PT_LOAD for the kernel
image (init_top_pgt and the KASLR-chosen bases live there) and one for a slice of RAM reached
through the direct map (page-table pages). The tables are laid out the x86_64 way, written here
independently of vmemtrace.kernel.kcore so that the two can disagree.
"""

import struct

TEXT = 0xFFFFFFFF83000000  # where the kernel image sits this "boot"
RAM_PHYS = 0x2000000  # first physical page handed out for page tables
PAGE = 4096


class Image:
    def __init__(self, levels: int, page_offset_base: int, vmemmap_base: int,
                 l5_symbol: bool = True, c_bit: int = 0, mask_symbol: str = "sme_me_mask"):
        assert levels in (4, 5)
        self.levels = levels
        self.pob = page_offset_base
        self.vmb = vmemmap_base
        self.l5_symbol = l5_symbol
        # AMD SME/SEV: the C-bit is set in every table entry the kernel writes (_PAGE_ENC in
        # _KERNPG_TABLE and __PAGE_KERNEL); kallsyms names it by sme_me_mask, or the kernel's
        # physical_mask leaves it out.
        self.enc = 1 << c_bit if c_bit else 0
        self.mask_symbol = mask_symbol
        self.top = bytearray(PAGE)  # init_top_pgt, in the kernel image
        self.ram = []  # page-table pages, RAM_PHYS onwards
        self.expected = {}  # vaddr of each 4 KiB page mapped -> (phys, level)
        self.mem_section = None  # physical address of the root pointer array, if any

    def _new_table(self) -> int:
        self.ram.append(bytearray(PAGE))
        return RAM_PHYS + (len(self.ram) - 1) * PAGE

    def _page(self, phys: int) -> bytearray:
        return self.ram[(phys - RAM_PHYS) // PAGE]

    def _index(self, vaddr: int, level: int) -> int:
        # level 5 = PGD (5-level), 4 = PGD/P4D, 3 = PUD, 2 = PMD, 1 = PTE
        return (vaddr >> (12 + 9 * (level - 1))) % 512

    def _descend(self, vaddr: int, stop_level: int) -> bytearray:
        """The table at stop_level that maps vaddr, creating the ones above it."""
        table = self.top
        for level in range(self.levels, stop_level, -1):
            i = self._index(vaddr, level)
            entry, = struct.unpack_from("<Q", table, i * 8)
            if entry & 1:
                phys = entry & 0x000FFFFFFFFFF000 & ~self.enc
            else:
                phys = self._new_table()
                # present, writable, accessed, dirty: what the kernel's tables carry
                struct.pack_into("<Q", table, i * 8, phys | self.enc | 0x63)
            table = self._page(phys)
        return table

    def map_4k(self, vaddr: int, phys: int) -> None:
        pte = self._descend(vaddr, 1)
        # NX and global bits set, as on real vmemmap PTEs: the walker must mask them off
        struct.pack_into("<Q", pte, self._index(vaddr, 1) * 8, phys | self.enc | 0x8000000000000163)
        self.expected[vaddr] = (phys, "pte")

    def map_2m(self, vaddr: int, phys: int) -> None:
        assert vaddr % (2 << 20) == 0 and phys % (2 << 20) == 0
        pmd = self._descend(vaddr, 2)
        struct.pack_into("<Q", pmd, self._index(vaddr, 2) * 8, phys | self.enc | 0x80000000000001E3)
        for off in range(0, 2 << 20, PAGE):
            self.expected[vaddr + off] = (phys + off, "pmd")

    def add_mem_sections(self, flags: dict, entry_size: int) -> None:
        """mem_section as CONFIG_SPARSEMEM_EXTREME lays it out (include/linux/mmzone.h): a
        pointer array, one root page of PAGE / entry_size entries per pointer, each entry's
        first word section_mem_map; `flags` maps section number -> that word."""
        per_root = PAGE // entry_size
        self.mem_section = self._new_table()
        roots = {}
        for nr, word in flags.items():
            if nr // per_root not in roots:
                roots[nr // per_root] = self._new_table()
                struct.pack_into("<Q", self._page(self.mem_section), nr // per_root * 8,
                                 self.pob + roots[nr // per_root])
            struct.pack_into("<Q", self._page(roots[nr // per_root]), nr % per_root * entry_size,
                             word)

    def vmemmap_va(self, pfn: int) -> int:
        return self.vmb + pfn * 64

    def write(self, path) -> dict:
        """Write the ELF file; returns the kallsyms data-symbol addresses of this image."""
        data = bytearray(self.top)
        symbols = {"init_top_pgt": TEXT, "page_offset_base": TEXT + PAGE,
                   "vmemmap_base": TEXT + PAGE + 8}
        tail = struct.pack("<QQ", self.pob, self.vmb)
        if self.l5_symbol:
            symbols["__pgtable_l5_enabled"] = TEXT + PAGE + 16
            tail += struct.pack("<I", 1 if self.levels == 5 else 0)
        if self.enc:
            symbols[self.mask_symbol] = TEXT + PAGE + 24
            tail = tail.ljust(24, b"\0") + struct.pack(
                "<Q", self.enc if self.mask_symbol == "sme_me_mask" else ((1 << 52) - 1) & ~self.enc)
        if self.mem_section is not None:
            symbols["mem_section"] = TEXT + PAGE + 32
            tail = tail.ljust(32, b"\0") + struct.pack("<Q", self.pob + self.mem_section)
        data += tail.ljust(PAGE, b"\0")
        ram = b"".join(self.ram)
        segments = [(TEXT, 0x1000000, bytes(data)), (self.pob + RAM_PHYS, RAM_PHYS, ram)]
        phoff, phentsize = 64, 56
        offset = phoff + phentsize * (len(segments) + 1)  # + a PT_NOTE, as kcore has
        offset = (offset + PAGE - 1) // PAGE * PAGE
        ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                           4, 62, 1, 0, phoff, 0, 0, 64, phentsize, len(segments) + 1, 64, 0, 0)
        phdrs = struct.pack("<IIQQQQQQ", 4, 0, 0, 0, 0, 0, 0, 4)  # PT_NOTE, empty
        body = b""
        for vaddr, paddr, blob in segments:
            phdrs += struct.pack("<IIQQQQQQ", 1, 7, offset + len(body), vaddr, paddr,
                                 len(blob), len(blob), PAGE)
            body += blob
        with open(path, "wb") as fh:
            fh.write((ehdr + phdrs).ljust(offset, b"\0") + body)
        return symbols
