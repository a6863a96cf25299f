"""Benchmarks of microdb, run by ``make bench``; every figure is printed next to a
baseline measured in the same run (the machine is shared and noisy)."""
