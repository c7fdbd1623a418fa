"""Fixtures for monitord's tests: coroutine tests and a world that cleans up after itself."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.monitord.harness import MonitordWorld


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run `async def` tests in a fresh event loop each (no plugin needed)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(pyfuncitem.obj(**args))
    return True


@pytest.fixture
def world() -> Iterator[MonitordWorld]:
    if os.geteuid() != 0:
        pytest.skip("containers need root")
    if not (shutil.which("runc") and shutil.which("conmon")):
        pytest.skip("runc and conmon must be installed")
    world = MonitordWorld()
    try:
        yield world
    finally:
        world.cleanup()
