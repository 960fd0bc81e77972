"""What to attach where: the probe targets (targets.py) and the per-kernel plan (plan.py)."""
