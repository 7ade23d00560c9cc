"""Benchmarks that print numbers: edit quality on the shapes world."""
