"""What a range should look like and whether it does: geometry, the ledger that folds events, the view of a device, the checks and the verdict. Pure: no I/O."""
