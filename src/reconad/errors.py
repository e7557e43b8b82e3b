"""The one exception type the CLI turns into a clean one-line error (exit code 2)."""

from __future__ import annotations


class ReconadError(Exception):
    """A user-facing error: bad input, a missing file, an unusable run. The message names the culprit."""


class ImageTooLarge(ReconadError):
    """An image with more pixels than reconad decodes (a possible decompression bomb)."""


class NotAnImage(ReconadError):
    """Bytes that no image decoder recognises (a text file named ``.png``, say)."""
