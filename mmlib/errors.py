"""Errors that carry the file they concern, so the CLI can report them without a traceback."""

from __future__ import annotations

from pathlib import Path


class MMLibError(Exception):
    """Base class for every error mmlib raises on purpose (bad input, bad config)."""

    def __init__(self, problem: str, file: str | Path | None = None):
        self.problem = problem
        self.file = None if file is None else str(file)
        super().__init__(f"{self.file}: {problem}" if self.file else problem)


class ManifestError(MMLibError):
    """A database manifest is missing a key, has a wrong value or cannot be parsed."""


class ModalityError(MMLibError):
    """A modality name is not in mmlib's vocabulary."""


class ImageReadError(MMLibError):
    """An image or label file is missing, unreadable, corrupt or holds bad values."""


class LayoutError(MMLibError):
    """A release folder does not look like the layout its manifest describes."""


class CheckpointError(MMLibError):
    """A checkpoint is missing, corrupt or does not fit the model asked for."""
