"""Shared fixtures: real servers live in ``servers.py``."""

pytest_plugins = ["servers"]
