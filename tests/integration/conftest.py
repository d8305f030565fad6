from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    live = Stack(tmp_path_factory.mktemp("stack"))
    try:  # a start that fails half-way still stops what it started
        yield live.start()
    finally:
        live.close()


@pytest.fixture
def workdir(stack: Stack) -> Path:
    return stack.workdir
