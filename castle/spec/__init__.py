"""The spec: the models of zones.toml (records pydantic_core validates), the wall rules, and
loading with line numbers."""
