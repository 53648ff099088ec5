"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ocr_service.documents import DecoderPool


@pytest.fixture(scope="session")
def pool() -> Iterator[DecoderPool]:
    """A decoder pool for tests that open documents directly (its children are started once)."""
    with DecoderPool(workers=2) as decoders:
        yield decoders
