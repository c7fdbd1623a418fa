"""Fixtures of the foundation tests."""

from __future__ import annotations

import pytest

from tests.foundation.echo import temp_config


@pytest.fixture
def config():
    with temp_config() as config:
        yield config
