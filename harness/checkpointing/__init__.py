"""Checkpoints and weights: atomic, verified save_state folders, loading them back safely, the progress they
carry, and the consolidated weights files inference reads."""
