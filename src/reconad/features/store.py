"""Features of more images than the memory budget holds: spooled to one raw file, read back in chunks.

A fit whose category's features would exceed ``--memory-budget`` writes them here as they are extracted
(:class:`FeatureSpool`) and hands the models :class:`FeatureRows`: the images' rows of that file, read a
slice at a time (never memory-mapped, so what is read is what is held). Reads are the float32 values
written, so a model fitted from the rows fits exactly as from the same features in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reconad.errors import ReconadError

#: Bytes a fit holds per byte of the features it reads at once: the features, their patch-major copy and
#: the working copies of the coreset or the atom sampling (measured: about 3; 4 leaves room).
WORKING_COPIES = 4


class FeatureSpool:
    """A raw float32 file of ``[C, h, w]`` feature rows, appended one image at a time."""

    def __init__(self, path: Path, shape: tuple[int, int, int], budget: int) -> None:
        self.path, self.shape, self.budget, self.count = path, shape, budget, 0
        self._file = open(path, "wb")  # noqa: SIM115 (closed by :meth:`rows`)

    def append(self, features: Tensor) -> None:
        if tuple(features.shape) != self.shape:
            raise ReconadError(f"feature shape {tuple(features.shape)} differs from the first {self.shape}")
        self._file.write(features.float().contiguous().numpy().tobytes())
        self.count += 1

    def rows(self) -> FeatureRows:
        """Every row written, in order (the file is closed for writing)."""
        self._file.close()
        return FeatureRows(self.path, self.shape, np.arange(self.count), self.budget)


class FeatureRows:
    """Some rows (images) of a spooled feature file: ``len``, ``shape`` and slicing like a ``[N, C, h, w]``
    tensor, where a slice reads those rows from disk; :meth:`take` picks rows without reading them.
    ``budget``: the bytes of features a fit may hold at once (:meth:`check_chunk`)."""

    def __init__(self, path: Path, shape: tuple[int, int, int], rows: np.ndarray, budget: int) -> None:
        self.path, self.row_shape, self.rows, self.budget = path, shape, rows, budget
        self.row_bytes = 4 * int(np.prod(shape))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.row_shape)

    def take(self, index: np.ndarray | Tensor) -> FeatureRows:
        """The rows at ``index`` (positions in these rows), not read yet."""
        return FeatureRows(self.path, self.row_shape, self.rows[np.asarray(index)], self.budget)

    def __add__(self, other: FeatureRows) -> FeatureRows:
        if other.path != self.path:
            raise ReconadError("feature rows of two spool files cannot be joined")
        return FeatureRows(self.path, self.row_shape, np.concatenate([self.rows, other.rows]), self.budget)

    def __getitem__(self, key: slice) -> Tensor:
        """The rows of slice ``key``, read: float32 ``[n, C, h, w]``."""
        wanted = self.rows[key]
        out = np.empty((len(wanted), *self.row_shape), np.float32)
        with open(self.path, "rb") as f:
            for i, row in enumerate(wanted):
                f.seek(int(row) * self.row_bytes)
                out[i] = np.frombuffer(f.read(self.row_bytes), np.float32).reshape(self.row_shape)
        return torch.from_numpy(out)

    def images_per_chunk(self, most: int) -> int:
        """The rows (with their working copies) the budget holds at once: at least 1, at most ``most``."""
        return max(1, min(most, self.budget // (WORKING_COPIES * self.row_bytes)))

    def check_chunk(self, n_images: int, what: str) -> None:
        """A one-line error where ``n_images`` rows and their working copies exceed the budget."""
        need = WORKING_COPIES * n_images * self.row_bytes
        if need > self.budget:
            raise ReconadError(
                f"--memory-budget {self.budget / 1e9:g} GB is below one chunk of {what} ({n_images} images: "
                f"{need / 1e9:.2f} GB with its working copies): raise the budget"
            )


#: Features of a fit: held in memory, or rows of a spool file.
Features = Tensor | FeatureRows


def take(features: Features, index: np.ndarray) -> Features:
    """The images at ``index``: a copy of a tensor's, or the rows not read yet."""
    return features.take(index) if isinstance(features, FeatureRows) else features[index]


def join(a: Features, b: Features) -> Features:
    """``a``'s images then ``b``'s."""
    return a + b if isinstance(a, FeatureRows) and isinstance(b, FeatureRows) else torch.cat([a, b])


def chunk_bounds(n: int, per_chunk: int) -> list[tuple[int, int]]:
    """``n`` images cut into the fewest chunks of at most ``per_chunk``, as equal as they can be."""
    k = max(1, -(-n // max(1, per_chunk)))
    edges = [round(i * n / k) for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:]))


def image_chunks(features: Features, per_chunk: int) -> Iterator[tuple[int, Tensor]]:
    """``(first image, features [n, C, h, w])`` of each chunk (:func:`chunk_bounds`), read one at a time."""
    for a, b in chunk_bounds(len(features), per_chunk):
        yield a, features[a:b]


def as_patches(features: Tensor) -> Tensor:
    """``[N, C, h, w]`` → float32 patch rows ``[N·h·w, C]`` (image-major, then row, then column)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]).float()


def gather_patches(features: Features, index: Tensor, per_chunk: int) -> Tensor:
    """The patch rows ``[len(index), C]`` at flat positions ``index`` of :func:`as_patches`, read chunk by
    chunk (equal to ``as_patches(features)[index]``)."""
    _, c, h, w = features.shape
    out = torch.empty(len(index), c)
    image = index // (h * w)
    for a, x in image_chunks(features, per_chunk):
        mine = ((image >= a) & (image < a + len(x))).nonzero()[:, 0]
        out[mine] = as_patches(x)[index[mine] - a * h * w]
    return out
