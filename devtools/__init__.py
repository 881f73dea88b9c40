"""Development helpers the tests, the benchmarks and the demo share (never shipped)."""
