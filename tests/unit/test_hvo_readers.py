"""The HugeTLB readers (kernel/hugetlb.py) on files laid out as the kernel lays them out."""

import struct

from vmemtrace.kernel import hugetlb

HEAD = (1 << hugetlb.KPF_HUGE) | (1 << hugetlb.KPF_COMPOUND_HEAD)
TAIL = (1 << hugetlb.KPF_HUGE) | (1 << hugetlb.KPF_COMPOUND_TAIL)
BUDDY = 1 << 10
# What a 6.12 guest's /proc/kpageflags showed for a freed 1 GiB folio that HVO had optimised:
# the first struct page of each restored vmemmap page still reads as a hugetlb head (0x28000),
# the page after it as no tail (0x0, or 0x110).
FAKE_HEAD, AFTER_FAKE = 0x28000, 0x110

PAGES_2M, PAGES_1G = 512, 262144


def kpageflags(tmp_path, total: int, folios: list[tuple[int, int]], fakes: list[int] = ()):
    words = [BUDDY] * total
    for head, pages in folios:
        words[head] = HEAD
        words[head + 1:head + pages] = [TAIL] * (pages - 1)
    for pfn in fakes:
        words[pfn], words[pfn + 1] = FAKE_HEAD, AFTER_FAKE
    path = tmp_path / "kpageflags"
    path.write_bytes(struct.pack(f"<{total}Q", *words))
    return str(path)


def test_folios_of_both_sizes_are_found_by_head_and_size(tmp_path):
    total = 3 * PAGES_1G
    folios = [(PAGES_2M, PAGES_2M), (3 * PAGES_2M, PAGES_2M), (PAGES_1G, PAGES_1G)]
    path = kpageflags(tmp_path, total, folios)
    assert hugetlb.read_folios([2048, 1048576], path).heads == folios


def test_fake_heads_left_by_a_freed_gigantic_folio_are_no_folios(tmp_path):
    fakes = [PAGES_1G + k * PAGES_2M for k in range(1, 512)]
    path = kpageflags(tmp_path, 2 * PAGES_1G, [(PAGES_2M, PAGES_2M)], fakes)
    found = hugetlb.read_folios([2048, 1048576], path)
    assert found.heads == [(PAGES_2M, PAGES_2M)]
    assert found.stale == fakes  # said, for the restore check: memory the kernel kept


def test_a_file_that_ends_mid_run_still_reads(tmp_path):
    path = kpageflags(tmp_path, PAGES_1G + 700, [(PAGES_1G, PAGES_2M)])
    assert hugetlb.read_folios([2048], path).heads == [(PAGES_1G, PAGES_2M)]
    assert hugetlb.read_folios([], path).heads == []


def test_switches_take_the_sysctl_and_the_last_command_line_word(tmp_path):
    (tmp_path / "proc/sys/vm").mkdir(parents=True)
    (tmp_path / "proc/sys/vm/hugetlb_optimize_vmemmap").write_text("1\n")
    (tmp_path / "proc/cmdline").write_text("ro hugetlb_free_vmemmap=off quiet hugetlb_free_vmemmap=on\n")
    assert hugetlb.switches(tmp_path).as_json() == {"sysctl": 1, "cmdline": "on"}
    (tmp_path / "proc/sys/vm/hugetlb_optimize_vmemmap").unlink()
    (tmp_path / "proc/cmdline").write_text("ro quiet\n")
    assert hugetlb.switches(tmp_path).as_json() == {"sysctl": None, "cmdline": None}


def test_pools_and_zones(tmp_path):
    for size, nr in ((2048, 16), (1048576, 0)):
        d = tmp_path / f"sys/kernel/mm/hugepages/hugepages-{size}kB"
        d.mkdir(parents=True)
        (d / "nr_hugepages").write_text(f"{nr}\n")
    assert hugetlb.pools(tmp_path) == {2048: 16, 1048576: 0}
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/zoneinfo").write_text(
        "Node 0, zone      DMA\n  pages free     3\n        present  3998\n"
        "Node 0, zone   Movable\n  pages free     0\n        present  0\n"
        "Node 0, zone   Normal\n  pages free     9\n        present  1048576\n")
    assert hugetlb.populated_zones(tmp_path) == 2


def test_vmstat_event_carries_the_boot_counter_where_the_kernel_has_it(tmp_path):
    from vmemtrace.kernel.vmstat import vmstat_event

    (tmp_path / "proc").mkdir()
    vmstat = tmp_path / "proc/vmstat"
    vmstat.write_text("nr_free_pages 3\nnr_memmap_pages 12288\nnr_memmap_boot_pages 20480\n")
    assert vmstat_event("before", tmp_path) == {"type": "vmstat", "when": "before",
                                                "nr_memmap_pages": 12288,
                                                "nr_memmap_boot_pages": 20480}
    vmstat.write_text("nr_free_pages 3\nnr_memmap_pages 12288\n")
    assert "nr_memmap_boot_pages" not in vmstat_event("after", tmp_path)
    vmstat.write_text("nr_free_pages 3\n")  # before 6.11
    assert vmstat_event("after", tmp_path) is None


def test_nodes_come_from_the_memory_blocks_sysfs_links_under_each_node(tmp_path):
    """As 6.12 lays sysfs out: blocks of block_size_bytes (hex), memory<M> links under node<N>."""
    (tmp_path / "sys/devices/system/memory").mkdir(parents=True)
    (tmp_path / "sys/devices/system/memory/block_size_bytes").write_text("8000000\n")
    for node, blocks in ((0, (0, 1)), (1, (3,))):
        for block in blocks:
            (tmp_path / f"sys/devices/system/node/node{node}/memory{block}").mkdir(parents=True)
    nodes = hugetlb.Nodes(tmp_path)
    per_block = (128 << 20) // 4096
    assert [nodes.of(b * per_block + 5) for b in range(4)] == [0, 0, None, 1]
    assert hugetlb.Nodes(tmp_path / "absent").of(0) is None


def test_this_hosts_memory_has_nodes():
    """The running kernel's sysfs: the pfn of each memory block lies on the node that lists it."""
    nodes = hugetlb.Nodes()
    assert nodes.block_pages and nodes.by_block
    block, node = min(nodes.by_block.items())
    assert nodes.of(block * nodes.block_pages) == node


def test_copies_of_the_head_in_freed_folios_are_counted_at_each_vmemmap_page(tmp_path):
    """As 6.12 leaves a freed 2 MiB folio: the first struct page of each restored vmemmap page
    (every 64th pfn, with 64-byte struct pages) a copy of the head; the real head is not one."""
    first, clean = PAGES_2M, 3 * PAGES_2M
    fakes = [first + k * 64 for k in range(1, 8)]
    path = kpageflags(tmp_path, 4 * PAGES_2M, [], fakes)
    assert hugetlb.head_copies([first], PAGES_2M, 64, path) == 7
    assert hugetlb.head_copies([clean], PAGES_2M, 64, path) == 0
    # the aligned scan that finds folios never looks there: no stale head, no folio
    assert hugetlb.read_folios([2048], path) == hugetlb.Folios([], [])

