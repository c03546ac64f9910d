"""Input and output plumbing: the one Jinja environment and atomic, checked file writes."""
