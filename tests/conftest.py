"""Fixtures shared across the suite: real registries, images, and a whole criplex."""

pytest_plugins = ["tests.support.fixtures"]
