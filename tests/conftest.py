"""Fixtures shared by several test modules: the real Docker Engine lab (tests/engine.py)."""

from tests.engine import docker_engine

__all__ = ["docker_engine"]
