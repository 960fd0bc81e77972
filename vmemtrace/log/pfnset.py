"""A set of page frame numbers that costs bits, not objects. Pure."""


class PfnSet:
    """A set of page frame numbers as a sparse bitmap: 4 KiB per 32768 neighbouring pfns seen.
    The backing pages of a range's vmemmap lie in a few runs of RAM, so a 1 TiB range's million
    pages cost a few hundred KiB where a Python set took tens of MiB."""

    CHUNK_BITS = 15

    def __init__(self):
        self._chunks: dict[int, bytearray] = {}
        self._len = 0

    def add(self, pfn: int) -> bool:
        """Adds pfn; False when it was there already."""
        chunk = self._chunks.get(pfn >> self.CHUNK_BITS)
        if chunk is None:
            chunk = self._chunks[pfn >> self.CHUNK_BITS] = bytearray(1 << (self.CHUNK_BITS - 3))
        low = pfn & ((1 << self.CHUNK_BITS) - 1)
        bit = 1 << (low & 7)
        if chunk[low >> 3] & bit:
            return False
        chunk[low >> 3] |= bit
        self._len += 1
        return True

    def __contains__(self, pfn: int) -> bool:
        chunk = self._chunks.get(pfn >> self.CHUNK_BITS)
        low = pfn & ((1 << self.CHUNK_BITS) - 1)
        return chunk is not None and bool(chunk[low >> 3] & (1 << (low & 7)))

    def __len__(self) -> int:
        return self._len

    def nbytes(self) -> int:
        return sum(len(c) for c in self._chunks.values())
