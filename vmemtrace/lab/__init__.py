"""The throwaway lab: a Debian kernel booted under qemu with emulated persistent memory.

Host side: kernels.py (which kernel), image.py (the cached guest root), vm.py (booting it),
runner.py (the cases, the tables). Guest side: guest.py runs inside the VM.
"""
