"""castle: one concentric-walls spec of a container stack, compiled into every wall that enforces it."""

__version__ = "0.1.0"
