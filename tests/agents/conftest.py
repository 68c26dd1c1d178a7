"""The server the agent tests drive: one per test module, from the main environment (``SERVER_PYTHON``)."""

from __future__ import annotations

import pytest

from tests.servers import run_server


@pytest.fixture(scope="module")
def server():
    with run_server() as running:
        yield running
