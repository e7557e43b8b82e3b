"""The backbone holds real ImageNet weights; the extractor's levels and shapes; the feature cache is exact and
never trusts a damaged entry; a weights file that is a malicious pickle is refused without running it."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from conftest import SIZE, CountingExtractor
from PIL import Image

from reconad import pipeline
from reconad.data import load_sources
from reconad.errors import ReconadError
from reconad.features.backbone import create_classifier, create_feature_backbone
from reconad.features.cache import FeatureCache, file_digest


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return create_classifier()


def test_embedded_weights_are_imagenet(classifier):
    """A photo of a cat is classified as a cat (ImageNet classes 281–285) by the wheel-shipped weights."""
    cat = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((224, 224), Image.Resampling.BILINEAR))
    x = (torch.from_numpy(cat.copy()).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        probs = classifier(x).softmax(-1)[0]
    top5 = probs.topk(5).indices.tolist()
    assert top5[0] in range(281, 286), top5
    assert probs[281:286].sum() > 0.5


def test_feature_backbone_uses_the_classifier_weights(classifier):
    features, (mean, std) = create_feature_backbone(layers=(2, 3))
    assert (mean, std) == ((0.5,) * 3, (0.5,) * 3)
    full = classifier.state_dict()
    for key, tensor in features.state_dict().items():
        assert torch.equal(tensor, full[key]), key
    assert not any(p.requires_grad for p in features.parameters())
    assert not features.training


def test_extractor_levels_and_shapes(extractor):
    assert extractor.level_channels == (40, 112)  # EfficientNet-Lite0 stages 2 and 3
    assert extractor.level_grids == (SIZE // 8, SIZE // 16)
    assert extractor.channels == 152 and extractor.level_hw[0] == (SIZE // 8, SIZE // 8)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8))
    out = extractor(images)
    assert out.shape == (3, 152, SIZE // 8, SIZE // 8) and out.dtype == torch.float32
    # channels [0, 40) are level 2 (3×3 average), [40, 152) level 3 (3×3 average, upsampled to level 2's grid)
    x = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        level2, level3 = extractor.model(x)
    smooth = lambda t: F.avg_pool2d(t, 3, stride=1, padding=1)  # noqa: E731  (the zero border counts)
    up = F.interpolate(smooth(level3), size=level2.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, :40], smooth(level2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 40:], up, rtol=1e-5, atol=1e-5)
    # each image's features do not depend on the rest of the batch
    torch.testing.assert_close(extractor(images[1:2]), out[1:2], rtol=1e-5, atol=1e-5)


def test_level_tokens_recover_each_level_at_its_own_grid(extractor):
    """The unified models' level split undoes the extractor's bilinear upsampling exactly: level 3 comes back
    as the backbone's smoothed 16-stride grid (no second blur)."""
    from reconad.models.trained.rlr import RLR

    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8))
    model = RLR(level_channels=extractor.level_channels, level_grids=extractor.level_grids)
    level2, level3 = model.tokens(extractor(images))
    x = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        raw2, raw3 = extractor.model(x)
    for got, raw in ((level2, raw2), (level3, raw3)):
        want = F.avg_pool2d(raw, 3, stride=1, padding=1).flatten(2).transpose(1, 2)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_extractor_key_follows_the_config(extractor):
    from reconad.features.extractor import FeatureExtractor

    assert extractor.key() == FeatureExtractor(image_size=SIZE).key()
    assert extractor.key() != FeatureExtractor(image_size=SIZE + 32).key()
    assert extractor.key() != FeatureExtractor(image_size=SIZE, layers=(1, 2)).key()


def test_square_sizes_keep_their_config_and_cache_key(extractor):
    """A square run's features config and cache key are those of the square-only reconad (keys computed
    before non-square sizes existed): its cache and run.json stay valid."""
    from reconad.features.extractor import FeatureExtractor

    assert extractor.config()["image_size"] == SIZE and type(extractor.config()["image_size"]) is int
    assert extractor.key() == "581794bca0a55f71"
    assert FeatureExtractor(image_size=(256, 256)).key() == FeatureExtractor().key() == "60b90bdb586d9075"


def test_a_non_square_size_is_stored_as_wxh_and_read_back():
    from reconad.features.extractor import FeatureExtractor

    wide = FeatureExtractor(image_size="128x64")  # width 128, height 64
    assert wide.image_hw == (64, 128) and wide.image_size == "128x64"
    assert wide.level_hw == ((8, 16), (4, 8)) and wide.level_grids == (8, 4)
    assert wide.config()["image_size"] == "128x64"
    again = FeatureExtractor.from_config(wide.config())
    assert again.image_hw == (64, 128) and again.key() == wide.key()
    others = (FeatureExtractor(image_size=(128, 64)).key(), FeatureExtractor(image_size=64).key())
    assert wide.key() not in others
    images = torch.zeros(2, 64, 128, 3, dtype=torch.uint8)
    assert wide(images).shape == (2, 152, 8, 16)
    with pytest.raises(ReconadError, match="not a multiple of 16"):
        FeatureExtractor(image_size="136x64").check_whole_grids()


def test_cache_hit_is_identical_and_a_damaged_entry_is_recomputed(tmp_path, parts, extractor):
    samples = load_sources([f"mvtec:{parts}"])[0].train[:4]
    cache = FeatureCache("test", tmp_path / "cache")
    counting = CountingExtractor(extractor)
    first = pipeline.extract(samples, counting, cache=cache).features
    assert counting.calls == 4
    again = pipeline.extract(samples, counting, cache=cache).features
    assert counting.calls == 4  # all four came from the cache
    assert torch.equal(again, first)  # bit for bit

    damaged = cache._path(file_digest(samples[2].path))
    damaged.write_bytes(damaged.read_bytes()[:50])  # a truncated entry, e.g. a full disk
    cache._path(file_digest(samples[3].path)).write_bytes(b"\0" * 64)  # junk
    repaired = pipeline.extract(samples, counting, cache=cache).features
    assert counting.calls == 6  # only the two damaged entries were recomputed
    assert torch.equal(repaired, first)
    assert torch.equal(cache.get(file_digest(samples[2].path)), first[2])  # and rewritten whole


def test_cache_is_keyed_by_content_not_name(tmp_path, parts):
    image = next((parts / "train" / "good").iterdir())
    copy = tmp_path / "renamed.png"
    copy.write_bytes(image.read_bytes())
    assert file_digest(copy) == file_digest(image)
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy)
    assert file_digest(copy) != file_digest(image)


def test_unwritable_cache_costs_speed_not_correctness(tmp_path, parts, extractor):
    samples = load_sources([f"mvtec:{parts}"])[0].train[:2]
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    cache = FeatureCache("test", tmp_path / "blocked")
    out = pipeline.extract(samples, extractor, cache=cache).features
    torch.testing.assert_close(out, pipeline.extract(samples, extractor).features)


class Evil:
    """Unpickling this creates ``marker``: the proof that a loader ran code from a model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_backbone_weights_refused(tmp_path, writer):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(Evil(control))).close()
    assert control.exists()  # the payload is live: plain unpickling runs it
    marker = tmp_path / "pwned"
    weights = tmp_path / "weights.pth"
    payload = {"conv_stem.weight": Evil(marker)}
    if writer == "pickle":
        weights.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, weights)
    with pytest.raises(ReconadError, match="cannot read weights"):
        create_classifier("tf_efficientnet_lite0", weights)
    assert not marker.exists()
    (tmp_path / "weights.safetensors").write_bytes(pickle.dumps(payload))
    with pytest.raises(ReconadError, match="cannot read weights"):
        create_classifier("tf_efficientnet_lite0", tmp_path / "weights.safetensors")
    assert not marker.exists()


def test_other_backbone_without_weights_fails_fast_and_offline(monkeypatch):
    """A timm model with no embedded weights and no --weights: a clear error, and no network access at all."""
    import socket

    attempts = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ReconadError, match="no embedded weights for backbone 'resnet18': pass --weights"):
        create_classifier("resnet18")
    assert attempts == []
