"""
Third-party log lines that are expected here and would read as faults: dropped, nothing else.

- torchao's wheel carries CUDA-only kernel libraries (mxfp8, CUTLASS for sm90a); on a CPU torch,
  or a GPU they were not built for, each failed load is logged as a warning at import. transformers
  imports torchao whenever it is installed, so every model load would print them. The layouts
  ``llm_weights`` uses do not come from those libraries (models/llm_weights.py).
- torchao registers its enums with torch's pytree the old way, and torch warns once per enum.

Only records that contain these fragments are dropped; every other record of the same loggers
still shows.
"""

from __future__ import annotations

import logging

EXPECTED = {
    'torchao': ('Failed to load', ),
    'torch.utils._pytree': ('register_constant() on Enum subclasses is deprecated', ),
}


class DropExpected(logging.Filter):
    """Drop the records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's name
        message = record.getMessage()
        return not any(f in message for f in self.fragments)


def install() -> None:
    """Add the filters once (importing the package does it)."""
    for name, fragments in EXPECTED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropExpected) for f in logger.filters):
            logger.addFilter(DropExpected(fragments))
