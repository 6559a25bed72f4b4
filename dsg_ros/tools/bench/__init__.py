"""Benchmarks (``dsg-ros bench …``): results as JSON plus a table in bench/RESULTS.md."""
