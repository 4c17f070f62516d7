"""Fixtures for the container tests: the local base image and the images built on it, made once per session
(cached across sessions, see ``container_support``), and the image size for the summary."""

from __future__ import annotations

import pytest
from container_support import base_image, fugato_image, image_size, service_image

_sizes: dict[str, int] = {}


@pytest.fixture(scope="session")
def base() -> str:
    return base_image()


@pytest.fixture(scope="session")
def image(base: str) -> str:
    tag = fugato_image(base)
    _sizes[tag] = image_size(tag)
    return tag


@pytest.fixture(scope="session")
def redis_image(base: str) -> str:
    return service_image("redis", base)


@pytest.fixture(scope="session")
def nats_image(base: str) -> str:
    return service_image("nats", base)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for tag, size in _sizes.items():
        terminalreporter.write_line(f"container image {tag}: {size / 1e6:.0f} MB")
