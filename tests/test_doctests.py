"""The worked examples in docstrings are true: each module's examples run as doctests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES_WITH_EXAMPLES = ["ocr_service.deepseek", "ocr_service.core.batcher", "ocr_service.core.estimates", "ocr_service.engines.rapidocr", "ocr_service.output.layout", "ocr_service.output.escape", "ocr_service.api.errors", "ocr_service.api.middleware", "ocr_service.api.mistral", "ocr_service.output.mistral"]


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples to run"
    assert result.failed == 0
