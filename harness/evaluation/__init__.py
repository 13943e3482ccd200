"""Evaluation: every sample predicted once at any process count, its metrics, test-time views, and the choice of
the best epoch and weights by validation."""
