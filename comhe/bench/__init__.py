"""Benchmarks (``make bench``, ``make bench-gpu``): scripts that print tables and write ``results/bench/*.csv``.

They are not tests: speed goals are recorded in BENCHMARKS.md with machine, date and command.
"""
