"""castle: one concentric-walls spec of a container stack, compiled into every wall."""

__version__ = "0.1.0"
