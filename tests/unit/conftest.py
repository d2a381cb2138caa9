"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def operator_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The one setting the operator has no default for, so that modules reading get_settings() import; the
    settings cache is cleared before and after, so no test sees another's."""
    monkeypatch.setenv("KENV_DESTINATION_REPO", "registry.example/kenv/environments")
    from kenv.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
