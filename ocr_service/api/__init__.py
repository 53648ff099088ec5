"""The HTTP layer: routes and wire models. It talks to `OcrService` only."""
