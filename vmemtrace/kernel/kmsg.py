"""The kernel log (/dev/kmsg) as a witness: up to 5.19 memmap_init_zone_device() reports
"memmap_init_zone_device initialised N pages in Xms" with pr_info (mm/page_alloc.c); later
kernels use pr_debug, silent unless dynamic debug enables it. N counts the pfns of its loop."""

import os
import re

MAX_RECORDS = 100000  # the kernel's log buffer holds far fewer
_INIT = re.compile(r"memmap_init_zone_device initialised (\d+) pages in (\d+)ms")


def parse_memmap_init(message: str) -> dict | None:
    m = _INIT.search(message)
    if not m:
        return None
    return {"type": "kmsg", "pages": int(m.group(1)), "ms": int(m.group(2))}


class KmsgCursor:
    """Messages logged after construction; silently empty where /dev/kmsg cannot be read."""

    def __init__(self, path: str = "/dev/kmsg"):
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError:
            self.fd = None

    def messages(self) -> list[str]:
        out = []
        # Bounded: /dev/kmsg gives EAGAIN at the end, but a file or a kernel that gives EOF
        # instead must not keep us here (each read returns one record, at most 8 KiB).
        for _ in range(MAX_RECORDS):
            if self.fd is None:
                break
            try:
                data = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except BrokenPipeError:
                continue  # records overwritten before we read them: skip to the next
            except OSError:
                break
            if not data:
                break
            record = data.decode(errors="replace")
            # "prio,seq,usec,flags;message\n continuation lines"
            out.append(record.split(";", 1)[-1].split("\n", 1)[0])
        return out

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
