"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NodeProcess, node_config


@pytest.fixture
def shared_data() -> Path:
    """The shared folder (data/, models/) when RADNODE_SHARED_DATA names it; a set
    variable with missing data is a failure, an unset one a skip."""
    value = os.environ.get("RADNODE_SHARED_DATA")
    if not value:
        pytest.skip("RADNODE_SHARED_DATA is not set")
    path = Path(value)
    if not (path / "data" / "lidc-idri-0001" / "ct").is_dir():
        pytest.fail(f"RADNODE_SHARED_DATA={value} does not hold data/lidc-idri-0001/ct")
    return path


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[type[NodeProcess]]:
    """Start nodes with `node_factory(**config_overrides)`; all are stopped afterwards."""
    started: list[NodeProcess] = []

    def make(start: bool = True, **overrides: object) -> NodeProcess:
        workdir = tmp_path / f"node{len(started)}"
        workdir.mkdir()
        node = NodeProcess(workdir, node_config(workdir, **overrides))
        started.append(node)
        return node.start() if start else node

    yield make  # type: ignore[misc]
    for node in started:
        node.stop()
