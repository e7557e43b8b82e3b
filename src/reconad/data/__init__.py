"""Data layer: dataset adapters yield :class:`Sample` records; :mod:`.imageio` decodes them safely."""

from reconad.data.imageio import load_image_and_mask, load_resized, read_image, read_mask, resize_images
from reconad.data.sample import CategoryData, Sample
from reconad.data.sources import load_sources

__all__ = [
    "CategoryData",
    "Sample",
    "load_image_and_mask",
    "load_resized",
    "load_sources",
    "read_image",
    "read_mask",
    "resize_images",
]
