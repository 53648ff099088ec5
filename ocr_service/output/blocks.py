"""The layout block: one labelled region of a page, in the page's pixels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """A region of the page: `bbox` is (x1, y1, x2, y2) in pixels of the page image."""

    label: str
    bbox: tuple[float, float, float, float]
    text: str

    def as_dict(self) -> dict:
        return {"label": self.label, "bbox": list(self.bbox), "text": self.text}
