"""Timing: the benchmark, its workers and backends, FLOP counts, profiles."""
