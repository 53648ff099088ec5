"""Benchmarks: a load generator driving a real service process, and the engine alone beside it."""
