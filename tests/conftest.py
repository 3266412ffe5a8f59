"""Shared fixtures: the packaged manifests (tiny releases are written by tests/fixtures.py)."""

from __future__ import annotations

import pytest

from mmlib.data.manifest import load_all_manifests


@pytest.fixture(scope="session")
def manifests():
    """The seven packaged manifests by name."""
    return load_all_manifests()
