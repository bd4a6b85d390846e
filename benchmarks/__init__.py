"""Benchmarks of statefuldata and trainer against what a user would otherwise use.

Run ``python -m benchmarks [NAME ...] [--quick] [--out DIR]``; see ``benchmarks/README.md``.
"""
