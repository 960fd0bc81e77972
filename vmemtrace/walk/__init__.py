"""The vmemmap as it is, read through /proc/kcore: the walk of a range, and what it turns into events."""
