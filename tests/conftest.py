"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import asyncio

import pytest
import uvloop


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """run(coroutine): runs it to completion on a new loop; every test using it runs twice, on
    asyncio's own loop and on uvloop, so a loop-specific bug cannot hide."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def run_coroutine(coroutine):
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coroutine)

    return run_coroutine
