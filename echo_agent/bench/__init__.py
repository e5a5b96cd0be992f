"""Benchmarks behind ``echo-agent bench``."""
