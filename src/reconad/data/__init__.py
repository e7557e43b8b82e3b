"""Data layer: dataset adapters yield :class:`Sample` records; :mod:`.imageio` decodes them safely.

The names below are imported on first use, so that ``reconad.data.sources`` (the CLI's list of formats)
loads without torch.
"""

from importlib import import_module
from typing import Any

_WHERE = {
    "CategoryData": "sample",
    "Sample": "sample",
    "load_image_and_mask": "imageio",
    "load_resized": "imageio",
    "load_sources": "sources",
    "read_image": "imageio",
    "read_mask": "imageio",
    "resize_images": "imageio",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'reconad.data' has no attribute {name!r}")
    return getattr(import_module(f"reconad.data.{_WHERE[name]}"), name)
