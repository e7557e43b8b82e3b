"""UniAD: the neck, the neighbour mask, shapes, learning, persistence and its declared parameters (its resume:
``test_rlr.py::test_resume_equals_an_uninterrupted_run``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from reconad.errors import ReconadError
from reconad.models.base import MODELS, check_params
from reconad.models.trained.attention import window_mask
from reconad.models.trained.trainer import clip_gradients, learning_rate
from reconad.models.trained.uniad import DecoderLayer, NeighbourMaskedAttention, UniAD, neck_matrix

#: Two levels as the extractor gives them: 6 channels on the finest grid, 10 upsampled from half of it.
TINY = dict(
    level_channels=(6, 10),
    level_grids=(8, 4),
    width=16,
    heads=2,
    encoder_layers=1,
    decoder_layers=1,
    ff_dim=32,
    window=3,
    device="cpu",
)


def _features(n: int = 8, seed: int = 0, h: int = 8, w: int = 12) -> torch.Tensor:
    """Smooth low-rank "normal" features, the coarse level upsampled as the extractor does."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    coef = torch.stack([torch.sin(3 * ys), torch.cos(2 * xs), ys * xs])  # [3, h, w]
    fine = torch.einsum("kc,khw->chw", torch.randn(3, 6, generator=g), coef)[None].repeat(n, 1, 1, 1)
    coarse = torch.einsum("kc,khw->chw", torch.randn(3, 10, generator=g), coef[:, ::2, ::2])[None]
    coarse = F.interpolate(coarse.repeat(n, 1, 1, 1), size=(h, w), mode="bilinear", align_corners=False)
    return torch.cat([fine, coarse], dim=1) + 0.05 * torch.randn(n, 16, h, w, generator=g)


def test_the_neck_recovers_a_coarse_level_exactly_and_resizes_a_fine_one_as_the_official_neck():
    coarse = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    up = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)  # what the extractor did
    m = neck_matrix(16, 16, 32).double()
    assert torch.allclose(m @ up @ m.T, coarse, atol=1e-5)
    fine = torch.randn(2, 3, 32, 32)
    m = neck_matrix(16, 32, 32)
    official = F.interpolate(fine, scale_factor=0.5, mode="bilinear", align_corners=True)  # MFCN's resize
    assert torch.allclose(m @ fine @ m.T, official, atol=1e-5)


def test_tokens_are_the_levels_on_the_coarsest_grid_concatenated():
    model = UniAD(**TINY)
    feats = _features(n=2)
    (tokens,) = model.tokens(feats)
    assert tokens.shape == (2, 4 * 6, 16)
    fine = F.interpolate(feats[:, :6], size=(4, 6), mode="bilinear", align_corners=True)
    assert torch.allclose(tokens[..., :6], fine.flatten(2).transpose(1, 2), atol=1e-5)


def test_masked_attention_never_reads_a_query_s_neighbourhood():
    torch.manual_seed(0)
    attn = NeighbourMaskedAttention(8, 2, dropout=0.0).double().eval()
    hw, i = (5, 6), 2 * 6 + 3
    q, kv = torch.randn(1, 30, 8, dtype=torch.float64), torch.randn(1, 30, 8, dtype=torch.float64)
    inside = window_mask(*hw, 3)[i]
    kv2 = kv.clone()
    kv2[:, inside] += torch.randn(int(inside.sum()), 8, dtype=torch.float64)
    assert torch.allclose(attn(q, kv2, kv2, hw, 3)[:, i], attn(q, kv, kv, hw, 3)[:, i], atol=1e-12)
    kv2[:, 0] += 1.0  # outside the window: read
    assert not torch.allclose(attn(q, kv2, kv2, hw, 3)[:, i], attn(q, kv, kv, hw, 3)[:, i])


def test_a_decoder_layer_starts_from_its_learned_queries_and_never_sees_the_neighbourhood():
    torch.manual_seed(0)
    hw, i = (5, 6), 2 * 6 + 3
    layer = DecoderLayer(8, 2, 16, 0.0, tokens=30).double().eval()
    pos = torch.randn(30, 8, dtype=torch.float64)
    memory, prev = torch.randn(2, 30, 8, dtype=torch.float64), torch.randn(2, 30, 8, dtype=torch.float64)
    inside = window_mask(*hw, 3)[i]
    memory2, prev2 = memory.clone(), prev.clone()
    memory2[:, inside] += 3.0
    prev2[:, inside] -= 3.0  # the position itself included: there is no residual from the input tokens
    base = layer(prev, memory, pos, hw, 3)[:, i]
    assert torch.allclose(layer(prev2, memory2, pos, hw, 3)[:, i], base, atol=1e-12)
    assert isinstance(layer.queries, torch.nn.Parameter) and layer.queries.shape == (30, 8)


def test_shapes_on_a_non_square_grid_and_save_load_gives_identical_predictions(tmp_path: Path):
    feats = _features(h=8, w=12)
    model = UniAD(**TINY, epochs=1).fit(feats)
    assert model.level_hw_ == [(4, 6)]
    (scores,) = model.predict(feats[:3])  # one map, on the model's grid: the pipeline resizes it once
    assert scores.shape == (3, 4, 6) and torch.isfinite(scores).all() and (scores >= 0).all()
    assert [m.shape for m in model.predict(feats[:0])] == [(0, 4, 6)]
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = UniAD.from_state(model.get_config(), load_file(str(tmp_path / "w.safetensors")))
    assert torch.equal(loaded.predict(feats[:3])[0], scores)
    assert loaded.loss_history_ == model.loss_history_
    with pytest.raises(ReconadError, match="fitted on"):
        loaded.predict(_features(h=16, w=16))


def test_the_loss_falls_and_the_score_is_the_reconstruction_distance():
    feats = _features(n=16)
    model = UniAD(**TINY, epochs=8, lr=1e-3, batch_size=4, jitter_scale=4.0).fit(feats)
    losses = model.loss_history_
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    (x,) = model.tokens(feats[:2])
    with torch.no_grad():
        want = (model.nets_[0](x) - x).norm(dim=-1).view(2, 4, 6)
    assert torch.allclose(model.predict(feats[:2])[0], want, atol=1e-5)


def test_its_own_recipe_adamw_clipping_and_the_step_schedule():
    model = UniAD(**TINY)
    recipe = model.recipe()
    net = torch.nn.Linear(3, 3)
    opt = recipe.optimizer(net.parameters())
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["weight_decay"] == 1e-4
    assert recipe.clip_norm == 0.1 and model.lr_schedule == "step" and model.jitter_scale == 20.0
    net(torch.full((1, 3), 100.0)).sum().backward()
    clip_gradients(opt, 0.1)
    norm = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).norm()
    assert norm == pytest.approx(0.1, rel=1e-5)
    assert [learning_rate(1.0, "step", s, 10) for s in (0, 7, 8, 9)] == [1.0, 1.0, 0.1, 0.1]


def test_registry_and_declared_parameters_refuse_bad_values():
    assert MODELS["uniad"] is UniAD and UniAD.unified
    assert check_params("uniad", {"width": "64", "window": "5"}) == {"width": 64, "window": 5}
    for values, words in [
        ({"width": 100, "heads": 8}, "width must be a multiple of heads=8"),
        ({"window": 4}, "window must be odd"),
        ({"dropout": 1.0}, "dropout must be a number in [0, 1)"),
        ({"clip_norm": 0}, "clip_norm must be a number in (0, 1000000]"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of 'constant', 'cosine', 'step'"),
        ({"device": "gpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"level_grids": [8, 3]}, "every level grid must divide the finest one"),
    ]:
        with pytest.raises(ReconadError) as info:
            UniAD(**{**TINY, **values})
        assert words in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ReconadError, match="a 7×7 neighbour mask does not fit the 4×6 grid"):
        UniAD(**{**TINY, "window": 7}).fit(_features())
    with pytest.raises(ReconadError, match="expects features"):
        UniAD(**TINY).fit(torch.randn(2, 5, 8, 8))
    with pytest.raises(ReconadError, match="not fitted"):
        UniAD(**TINY).predict(_features())


def test_a_run_of_the_model_once_called_uniad_is_refused_with_a_refit_hint():
    old = {"net.0.embed.weight": torch.zeros(4, 6), "level_hw": torch.tensor([[8, 8], [4, 4]])}
    with pytest.raises(ReconadError, match="older reconad: refit"):
        UniAD.from_state({"widths": None, "layers": 2}, old)
