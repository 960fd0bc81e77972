"""Facts about a running kernel, read from the files it exposes. No BPF here.

Every reader takes the file system root it reads from (default "/"), so the same code runs on the
live kernel and on excerpts of real kernels' files kept as test fixtures.
"""
