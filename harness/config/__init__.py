"""The run configuration: its schema and rules, reading YAML and overrides into it, and the run names it gives."""
