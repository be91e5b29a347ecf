"""Task functions for launcher tests: run in submitit's job processes, so they live in an importable module."""

import time


def wait_seed_seconds(cfg) -> str:
    """Ends after `seed` seconds: jobs of a batch end in the order of their seeds."""
    time.sleep(cfg.seed)
    return f"seed{cfg.seed}"
