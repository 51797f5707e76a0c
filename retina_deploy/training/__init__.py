"""Training: the run (``run.train``), its config, the loops, optimiser, distributed helpers and run files."""
