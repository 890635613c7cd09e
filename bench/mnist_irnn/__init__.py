"""The parts of bench/seq_mnist.py, one job each.

errors (what can go wrong) < config (defaults, presets, resume rules),
distributed (the process group), data, model, files (run directory and
atomic writes) < checkpoints, reporting < evaluation < training; the
script ties them together. Imports run only that way (tested).
"""
