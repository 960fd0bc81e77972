"""vmemtrace: watch the kernel build the vmemmap of device-dax memory."""

__version__ = "0.1.0"
