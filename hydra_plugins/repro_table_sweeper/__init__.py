"""Hydra sweeper `table`: the BasicSweeper's cartesian product, narrowed to the rows of a paper table."""
