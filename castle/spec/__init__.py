"""The spec: pydantic models of zones.toml, the wall rules, and loading with line numbers."""
