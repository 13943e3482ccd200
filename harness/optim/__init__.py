"""Optimization: the optimizer and its parameter groups, the learning-rate schedule, the loss."""
