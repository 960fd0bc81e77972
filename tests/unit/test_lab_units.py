"""The lab's pure parts: kernel specs, cases, sizes, and its refusals (no guest booted)."""


import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from vmemtrace.errors import VmemtraceError
from vmemtrace.lab import cases, kernels, libdisk, nfit


def test_newest_abi_by_number_not_by_string():
    names = ["linux-image-6.12.95+deb12-amd64", "linux-image-6.12.117+deb12-amd64",
             "linux-image-6.12.100+deb12-cloud-amd64", "linux-image-6.1.0-56-amd64",
             "linux-image-6.1.0-9-amd64", "linux-image-5.10.0-46-amd64"]
    assert kernels.newest_abi("6.12", names) == "6.12.117+deb12-amd64"
    assert kernels.newest_abi("6.1", names) == "6.1.0-56-amd64"
    assert kernels.newest_abi("5.10", names) == "5.10.0-46-amd64"
    with pytest.raises(VmemtraceError):
        kernels.newest_abi("6.1", ["linux-image-6.12.95+deb12-amd64"])


def test_newest_7_3_from_whichever_suite_carries_it():
    names = ["linux-image-7.3.4+deb13-amd64", "linux-image-7.3.10+deb14-amd64",
             "linux-image-7.3.9+deb13-cloud-amd64", "linux-image-7.2.8+deb14-amd64"]
    assert kernels.newest_abi("7.3", names) == "7.3.10+deb14-amd64"


def test_kernel_spec(tmp_path):
    assert kernels.parse_spec("6.1").series == "6.1"
    assert kernels.parse_spec("7.3").suite == kernels.TRIXIE
    assert kernels.parse_spec("6.12").suite == kernels.BOOKWORM
    with pytest.raises(VmemtraceError, match="unknown kernel spec"):
        kernels.parse_spec("4.19")
    image = tmp_path / "bzImage"
    image.write_bytes(b"\0")
    with pytest.raises(VmemtraceError, match="--modules"):
        kernels.parse_spec(str(image))
    mods = tmp_path / "6.99.0"
    (mods / "kernel").mkdir(parents=True)
    with pytest.raises(VmemtraceError, match="no kernel build tree"):
        kernels.parse_spec(str(image), str(mods))  # its build link is missing
    build = tmp_path / "linux"
    (build / "include").mkdir(parents=True)
    (build / "Makefile").write_text("")
    spec = kernels.parse_spec(str(image), str(mods), str(build))
    assert spec.image == image and spec.modules == mods and spec.headers == build


@pytest.mark.parametrize("package, suite", [
    ("linux-image-6.1.0-56-amd64", kernels.BOOKWORM),
    ("linux-image-5.10.0-46-amd64", kernels.BOOKWORM),
    ("linux-image-6.12.117+deb12-amd64", kernels.BOOKWORM),
    ("linux-image-6.12.57+deb13-amd64", kernels.TRIXIE),
    ("linux-image-7.3.4+deb13-amd64", kernels.TRIXIE),
    ("linux-image-7.3.4+deb13-rt-amd64", kernels.TRIXIE),
    ("linux-image-7.2.8+deb14-cloud-amd64", kernels.TRIXIE)])
def test_debian_package_specs_boot_in_the_root_of_their_suite(package, suite):
    spec = kernels.parse_spec(package)
    assert spec.package == package and spec.suite == suite


def test_not_a_package_name():
    with pytest.raises(VmemtraceError, match="not a Debian x86_64 kernel package name"):
        kernels.parse_spec("linux-image-amd64")
    res = run_cli("lab", "--kernel", "linux-image-amd64")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr


def test_abi_of_release():
    assert kernels.abi_of_release("7.3.4+deb13-amd64") == "7.3.4+deb13"
    assert kernels.abi_of_release("7.3.4+deb13-cloud-amd64") == "7.3.4+deb13"
    assert kernels.abi_of_release("6.1.0-56-amd64") == "6.1.0-56"




def test_cases_and_ndctl_arguments():
    chosen = cases.parse_cases("mem-1G,dev-2M")
    assert [c.name for c in chosen] == ["mem-1G", "dev-2M"]
    assert chosen[0].ndctl_args("namespace0.0")[-4:] == ["-M", "mem", "-a", "1G"]
    assert chosen[1].ndctl_args("namespace0.0")[-4:] == ["-M", "dev", "-a", "2M"]
    assert cases.CASES["mem-4K"].ndctl_args("namespace0.0")[-1] == "4K"
    with pytest.raises(VmemtraceError, match="unknown case"):
        cases.parse_cases("mem-3M")


def test_nvdimms_are_sparse_files_qemu_maps_after_ram(tmp_path):
    """hw/mem/nvdimm.c takes the label area from the end of the backing file and rounds the
    rest down to the backend's alignment: a file one ALIGN larger keeps --size whole. Measured
    in a 6.12 guest with these options: two regions of 4 GiB at 6 GiB and 10 GiB, 16M aligned."""
    GiB = 1 << 30
    nv = nfit.Nvdimms(4 * GiB)
    opts = nv.qemu_opts("tcg", tmp_path)
    assert opts[:2] == ["-m", f"{nv.guest_memory() >> 20}M,slots=2,maxmem={(nv.guest_memory() >> 20) + 2 * 6144}M"]
    assert "-cpu" not in opts  # ends far below TCG's 1 TiB of addresses
    files = [o for o in opts if o.startswith("memory-backend-file")]
    assert files == [f"memory-backend-file,id=vt-nv{i},share=on,mem-path={tmp_path}/nvdimm{i}.img,"
                     "size=5120M,align=1024M" for i in range(2)]
    assert opts.count("-device") == 2 and "label-size=131072" in opts[opts.index("-device") + 1]
    with nv.backed(tmp_path):
        paths = sorted(tmp_path.iterdir())
        assert [p.stat().st_size for p in paths] == [5 * GiB] * 2
        assert all(p.stat().st_blocks == 0 for p in paths)  # sparse: nothing written
    assert list(tmp_path.iterdir()) == []  # gone after the boot
    big = nfit.Nvdimms(1 << 40, count=1)
    assert big.qemu_opts("tcg", tmp_path)[-6:-4] == ["-cpu", "max,phys-bits=48"]
    assert big.guest_memory() == 6 * GiB + (1 << 40) // 64  # room for 4 KiB compound pages' vmemmap


def test_the_multi_case_runs_one_chain_of_ndctl_per_region_at_once():
    (multi,) = cases.parse_cases("multi", "nfit")
    GiB = 1 << 30
    argv = multi.command([("region0", 3 * GiB), ("region1", 3 * GiB)], 16 << 20)
    assert argv[:2] == ["sh", "-c"]
    script = argv[2]
    chains = script.split(" & ")[:2]
    assert "-r region0 -s 1610612736 -m devdax -M mem -a 2M && " in chains[0]
    assert "-r region0 -s 1610612736 -m devdax -M dev -a 2M" in chains[0]
    assert "-r region1 -s 3221225472 -m devdax -M mem -a 1G" in chains[1]
    assert script.endswith("s=0; wait $p0 || s=$?; wait $p1 || s=$?; exit $s")
    # a region whose half is not whole 1 GiB pages would be rounded down to them
    odd = cases.Multi("odd", (cases.Part(0, cases.CASES["mem-1G"], 1),))
    assert "-s 1073741824 " in odd.command([("region0", 3 * GiB)], 16 << 20)[2]
    import subprocess  # the script's exit: the first failing chain's status, after both ended
    fail = subprocess.run(["sh", "-c", "( true ) & p0=$!; ( exit 3 ) & p1=$!; "
                           + "s=0; " + script.split("; s=0; ")[1]])
    assert fail.returncode == 3


def test_sizes():
    assert cases.parse_size("3G") == 3 << 30
    assert cases.parse_size("1536M") == 1536 << 20
    assert cases.parse_size("4GiB") == 4 << 30
    for bad in ("3", "100M", "-1G", "big"):
        with pytest.raises(VmemtraceError):
            cases.parse_size(bad)


def test_regions_up_to_a_tebibyte_follow_qemus_memory_layout():
    """qemu 7.2's pc_memory_init (hw/i386/pc.c): RAM above 4 GiB starts at 1 TiB once it (and
    the 64-bit PCI hole) would reach the HyperTransport hole at 1012 GiB. Measured in a TCG guest
    with -m 1036G: e820 usable from 0x10000000000, `persistent (type 12)` at 1026G."""
    GiB = 1 << 30
    assert cases.parse_size("1T") == 1 << 40
    small = cases.Region(3 * GiB)
    assert (small.start, small.guest_memory(), small.qemu_opts("tcg")) == (5 * GiB, 8 * GiB, [])
    assert small.kernel_args() == "memmap=3072M!5120M"  # unchanged for the lab's usual region
    tib = cases.Region(1 << 40)
    assert tib.start == 1026 * GiB  # 2 GiB of RAM at 1 TiB below it
    # 2 GiB low + 2 GiB at 1 TiB + the region + RAM after it for 1 TiB's vmemmap (16 GiB at 4K)
    assert tib.guest_memory() == (2 + 2 + 1024 + 2 + 16) * GiB
    assert tib.kernel_args() == "memmap=1048576M!1050624M modprobe.blacklist=nd_pmem"
    opts = tib.qemu_opts("tcg")
    assert opts[:2] == ["-cpu", "max,phys-bits=48"]  # TCG's default is 40 bits: 1 TiB
    assert "reserve=off" in opts[3] and f"size={tib.guest_memory() >> 20}M" in opts[3]
    assert tib.qemu_opts("kvm")[:1] == ["-object"]
    mid = cases.Region(256 * GiB)  # ends below the hole: RAM from 4 GiB as usual
    # 2 GiB low, and from 4 GiB up to the region's end plus 2 GiB + 4 GiB (vmemmap) after it
    assert mid.start == 5 * GiB and mid.guest_memory() == (2 + (5 + 256 + 6 - 4)) * GiB
    assert mid.qemu_opts("tcg")[0] == "-object"
    with pytest.raises(VmemtraceError, match="start it at 1026G or above"):
        cases.Region(1 << 40, 5 * GiB)
    with pytest.raises(VmemtraceError, match="start it below 1T"):
        cases.Region(3 * GiB, 1100 * GiB)


@pytest.mark.parametrize("args,message", [
    (["--kernel", "4.19"], "unknown kernel spec '4.19'"),
    (["--case", "mem-3M"], "unknown case mem-3M"),
    (["--size", "1000M"], "multiple of 128M"),
    (["--size", "1T", "--pmem-start", "5G"], "HyperTransport hole"),
    (["--case", "multi"], "case multi needs --pmem nfit"),
    (["--pmem", "nfit", "--pmem-start", "6G"], "qemu places NVDIMMs itself"),
])
def test_lab_refuses_bad_input_in_one_line(args, message):
    res = run_cli("lab", *args)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr


def test_lab_systemd_runs_a_command_beside_the_unit():
    res = run_cli("lab", "--systemd")
    assert res.returncode == 64, res.stderr
    assert "--systemd runs an --exec command" in res.stderr and "Traceback" not in res.stderr


def test_lab_systemd_needs_the_source_tree_to_build_the_deb(tmp_path):
    from vmemtrace.errors import VmemtraceError
    from vmemtrace.lab import deb

    with pytest.raises(VmemtraceError, match="builds the .deb from a source checkout"):
        deb.build(tmp_path, tmp_path / "out")


def test_the_guest_is_told_to_install_the_unit_only_under_systemd():
    from vmemtrace.lab.runner import guest_command

    assert guest_command([], "true", systemd=True).endswith(" --systemd")
    assert "--systemd" not in guest_command([], "true")


def test_lab_without_qemu(tmp_path):
    res = run_cli("lab", env={"PATH": str(tmp_path)})
    assert res.returncode == 2
    assert res.stderr.strip() == "vmemtrace: qemu-system-x86_64 not found (apt install qemu-system-x86)"


def test_lab_with_unwritable_cache(tmp_path):
    res = run_cli("lab", env={"XDG_CACHE_HOME": "/proc/vmemtrace-cannot-write"})
    assert res.returncode == 2
    assert "is not writable" in res.stderr and res.stderr.count("\n") == 1



# ldd of Debian bookworm's libbcc.so.0 (chroot into the lab's root), cut to a few lines
LDD_LIBBCC = """\tlinux-vdso.so.1 (0x00007ffc3b5f2000)
\tlibclang-cpp.so.14 => /lib/x86_64-linux-gnu/libclang-cpp.so.14 (0x00007f2a6c000000)
\tlibLLVM-14.so.1 => /lib/x86_64-linux-gnu/libLLVM-14.so.1 (0x00007f2a65c00000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2a65a1f000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f2a65940000)
\tlibz.so.1 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2a70b7a000)
"""


def test_bcc_libraries_disk_takes_what_ldd_resolved_but_the_c_library():
    assert libdisk.library_paths(LDD_LIBBCC) == ["/lib/x86_64-linux-gnu/libclang-cpp.so.14",
                                                 "/lib/x86_64-linux-gnu/libLLVM-14.so.1"]
    assert libdisk.qemu_opts(None) == []
    opts = " ".join(libdisk.qemu_opts(libdisk.disk_path(Path("/c/root"))))
    assert "file=/c/root.bcc-libs.tar," in opts and "readonly=on" in opts
    assert f"serial={libdisk.SERIAL}" in opts


def test_the_guest_finds_the_disk_by_its_serial(tmp_path):
    for name, serial in (("vda", "other"), ("vdb", libdisk.SERIAL + "\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "serial").write_text(serial)
    (tmp_path / "vdc").mkdir()  # no serial file
    assert libdisk.find_device(tmp_path) == "/dev/vdb"
    (tmp_path / "vdb" / "serial").write_text("x")
    assert libdisk.find_device(tmp_path) is None


def test_the_libraries_disk_is_packed_again_after_the_roots_packages_change(tmp_path, capsys):
    import os

    root = tmp_path / "root"
    libbcc = root / libdisk.LIBBCC.lstrip("/")
    status = root / "var/lib/dpkg/status"
    assert libdisk.ensure(root) is None  # no BCC in this root: no disk
    for f in (libbcc, status):
        f.parent.mkdir(parents=True)
        f.write_text("x")
        os.utime(f, (1000, 1000))
    disk = libdisk.disk_path(root)
    disk.write_text("packed")
    os.utime(disk, (2000, 2000))
    assert libdisk.ensure(root) == disk  # up to date: kept, nothing run
    os.utime(status, (3000, 3000))  # e.g. apt upgraded libLLVM, not libbcc
    # packed again: in this root there is no ldd to list the libraries, so no disk, and a line
    assert libdisk.ensure(root) is None
    assert "load BCC's libraries over 9p" in capsys.readouterr().err


def test_the_lab_table_has_a_row_per_device_with_its_own_notes():
    """The 6.1 multi case on NFIT NVDIMMs (recorded): three devices, one verify; each row says
    what that device skipped, not what any device of the case did."""
    from tests.conftest import FIXTURES
    from vmemtrace.lab.tables import case_table

    doc = json.loads((FIXTURES / "events/nfit/6.1.0-57-amd64/lab.json").read_text())
    rows = [line for line in case_table(doc).splitlines() if line.startswith("multi")]
    assert [row.split()[1] for row in rows] == ["dax0.0", "dax0.1", "dax1.0"]
    devices = doc["cases"][0]["result"]["devices"]
    for row, dev in zip(rows, devices):
        skipped = sorted(c["name"] for c in dev["checks"] if c["status"] == "skip")
        assert row.rstrip().endswith("skipped " + ",".join(skipped)), (row, skipped)


def test_a_kernel_without_device_dax_is_said_before_it_boots(tmp_path):
    """Debian's -rt flavour builds no device-dax: its config says so, and the lab stops there."""
    from vmemtrace.lab.image import GuestKernel, device_dax_problem

    release = "6.12.118+deb12-rt-amd64"
    kernel = GuestKernel(release, tmp_path / "vmlinuz", tmp_path)
    assert device_dax_problem(kernel) is None  # no config: nothing to tell before the boot
    (tmp_path / "boot").mkdir()
    config = tmp_path / "boot" / f"config-{release}"
    config.write_text("CONFIG_X86_64=y\n# CONFIG_DEV_DAX is not set\n")
    assert device_dax_problem(kernel) == (
        f"{release} is built without CONFIG_DEV_DAX and CONFIG_DEV_DAX_PMEM "
        f"(/boot/config-{release}): it has no device-dax to verify")
    config.write_text("CONFIG_DEV_DAX=m\nCONFIG_DEV_DAX_PMEM=m\n")
    assert device_dax_problem(kernel) is None


def test_the_cxl_window_starts_where_asked(tmp_path):
    """qemu 7.2 puts the CXL window 256 MiB past the 1 GiB boundary after RAM (and after a
    memory slot's device area): measured in a 6.12 guest, 6912 MiB of RAM without a slot put
    it at 9472 MiB; these options put it at 9216 MiB, where `cxl list` showed decoder0.0."""
    from vmemtrace.lab.cxl import CxlMemory

    GiB, MiB = 1 << 30, 1 << 20
    aligned = CxlMemory(3 * GiB)
    assert aligned.start == 9 * GiB
    opts = aligned.qemu_opts("tcg", tmp_path)
    # RAM ends at 7 GiB; the slot's 1 GiB and 768 MiB more end it at 8 GiB + 768 MiB, the host
    # bridge registers 1 MiB later: the next 256 MiB boundary is 9 GiB
    assert opts[opts.index("-m") + 1] == "5120M,slots=1,maxmem=5888M"
    assert aligned.guest_memory() == 5 * GiB
    (device,) = [o for o in opts if o.startswith("cxl-type3,")]
    # a serial number: 7.3 makes no nvdimm of a device without one
    assert device == ("cxl-type3,bus=vt-cxl-rp0,memdev=vt-cxl-mem,lsa=vt-cxl-lsa,"
                      "sn=0x766d656d74726163,id=vt-cxl-pmem0")
    assert "cxl-fmw.0.targets.0=vt-cxl.0,cxl-fmw.0.size=3072M" in opts
    # the kernel commits a region only where it can flush CPU caches, which it never assumes
    # under a hypervisor: TCG has none to flush
    assert opts[-2:] == ["-cpu", "max,hypervisor=off"]
    assert "pcie_ports=compat" in aligned.kernel_args()
    off = CxlMemory(3 * GiB, 9 * GiB + 256 * MiB)  # no slot: RAM up to 9 GiB
    assert "-m" not in off.qemu_opts("tcg", tmp_path) and off.high_ram() == 5 * GiB
    with aligned.backed(tmp_path):
        assert sorted(p.stat().st_size for p in tmp_path.iterdir()) == [256 << 10, 3 * GiB]
        assert all(p.stat().st_blocks == 0 for p in tmp_path.iterdir())
    assert list(tmp_path.iterdir()) == []
    for start, why in ((9 * GiB + 100 * MiB, "256M boundary"), (6 * GiB, "at least 3 GiB"),
                       (8 * GiB + 256 * MiB + GiB, None)):
        if why is None:
            CxlMemory(GiB, start)
            continue
        with pytest.raises(VmemtraceError, match=why):
            CxlMemory(GiB, start)
    with pytest.raises(VmemtraceError, match="whole 256M pieces"):
        CxlMemory(GiB + 128 * MiB)


def test_a_kernel_without_cxl_regions_is_said_before_it_boots(tmp_path):
    """5.10 predates CXL regions (6.0): `--pmem cxl` stops before the boot and says why."""
    from vmemtrace.lab.cxl import CxlMemory
    from vmemtrace.lab.image import GuestKernel, device_dax_problem

    release = "5.10.0-46-amd64"
    kernel = GuestKernel(release, tmp_path / "vmlinuz", tmp_path)
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / f"config-{release}").write_text(
        "CONFIG_DEV_DAX=m\nCONFIG_DEV_DAX_PMEM=m\nCONFIG_ACPI_NFIT=m\n")
    assert device_dax_problem(kernel, CxlMemory.config) == (
        f"{release} is built without CONFIG_CXL_ACPI, CONFIG_CXL_PCI, CONFIG_CXL_MEM, "
        f"CONFIG_CXL_PMEM, CONFIG_CXL_REGION (/boot/config-{release}): it cannot make the "
        "persistent memory this lab asked for")
    assert device_dax_problem(kernel, nfit.Nvdimms.config) is None


def test_the_cxl_lab_table_names_the_region_each_device_lies_in():
    """A real `lab --pmem cxl` document (6.12.118, the window at 9 GiB): every device row says
    its CXL region, and the document carries the guest's own `cxl list` beside it."""
    from tests.conftest import FIXTURES
    from vmemtrace.lab.tables import case_table

    doc = json.loads((FIXTURES / "events/cxl/9216M-6.12.118+deb12-amd64/lab.json").read_text())
    assert doc["pmem"] == "cxl"
    rows = [line.split() for line in case_table(doc).splitlines()[2:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("mem-2M", "dax0.0", "(region0)"), ("mem-1G", "dax0.0", "(region0)"),
        ("dev-2M", "dax0.0", "(region0)")]
    listed = {k for part in doc["cxl"] for k in part}
    assert {"memdevs", "root decoders", "endpoint decoders"} <= listed


def test_cxl_memory_runs_the_namespace_cases_not_the_two_region_ones():
    """One CXL device makes one region: the multi cases need NFIT's two."""
    assert [c.name for c in cases.parse_cases("mem-2M,mem-1G,dev-2M,mem-4K", "cxl")] == [
        "mem-2M", "mem-1G", "dev-2M", "mem-4K"]
    with pytest.raises(VmemtraceError, match="case multi needs --pmem nfit"):
        cases.parse_cases("multi", "cxl")
    res = run_cli("lab", "--pmem", "cxl", "--pmem-start", "9300M", "--kernel", "6.12")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "vmemtrace: --pmem-start 9300M: a CXL window starts on a 256M boundary")


def test_labs_side_by_side_get_their_own_run_and_keep_each_others(tmp_path):
    """Two labs started in the same second boot into different directories; pruning removes the
    oldest runs beyond the kept number, never one a lab beside it may still be writing."""
    import os
    import time

    from vmemtrace.lab import runner

    runs = tmp_path / "runs"
    runs.mkdir()
    hour_ago = time.time() - runner.BUSY_SECONDS - 60
    for i in range(runner.KEEP_RUNS + 2):
        old = runs / f"20000101-0000{i:02d}-6.12"
        (old / "out").mkdir(parents=True)
        os.utime(old, (hour_ago, hour_ago))
    busy = runs / "20000101-000000-7.3"  # the oldest name, its console still written
    (busy / "out").mkdir(parents=True)
    os.utime(busy, (hour_ago, hour_ago))
    (busy / "console.log").write_text("booting\n")
    one, two = runner._new_workdir(tmp_path, "6.12"), runner._new_workdir(tmp_path, "6.12")
    assert one != two and (one / "out").is_dir() and (two / "out").is_dir()
    left = sorted(p.name for p in runs.iterdir())
    assert busy.name in left
    # each call found one more than it keeps and the busy run among the oldest: 3 removed
    assert [n for n in left if n.endswith("-6.12")][:1] == ["20000101-000003-6.12"]
    assert len(left) == runner.KEEP_RUNS + 2  # the kept ones, the busy one, the new one


def test_labs_started_at_once_both_find_the_cache_writable(tmp_path):
    """Each lab probes the cache with a file of its own: one never removes the other's."""
    from concurrent.futures import ThreadPoolExecutor

    from vmemtrace.lab import image

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: image.ensure_writable(tmp_path), range(400)))
    assert list(tmp_path.iterdir()) == []
