"""Tuning: the LR finder, and sweeps of runs over config values (k-fold included)."""
