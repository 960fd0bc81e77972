"""The event log: the events the BPF program and the walk produce, their per-range sums and compound pages, and the log file format (seal, schema)."""
