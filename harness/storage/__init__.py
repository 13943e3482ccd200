"""Files on disk: each replaced whole, and the layout of a run directory."""
