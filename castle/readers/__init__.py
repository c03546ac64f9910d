"""Readers of generated artifacts: what a compose file, a ruleset or a policy allows."""
