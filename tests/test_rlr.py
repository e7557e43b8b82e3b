"""RLR and its ablation RLR-selfref (no learnable reference): layer semantics, shapes, persistence,
checkpoints, resume, learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from reconad.errors import ReconadError
from reconad.models.base import MODELS, create_model
from reconad.models.trained.attention import window_mask
from reconad.models.trained.reconstruction import LevelShape, reconstruction_error, sincos_position_2d
from reconad.models.trained.rlr import RLR, RLRLayer, RLRLevel
from reconad.models.trained.rlr_selfref import RLRSelfRef, SelfRefLayer
from reconad.models.trained.trainer import BatchLoss, feature_jitter, learning_rate
from reconad.scoring import anomaly_maps

HW = (6, 8)
N = HW[0] * HW[1]
TINY = dict(level_channels=(6, 10), level_grids=(8, 4), widths=(8, 8), layers=1, heads=2, windows=(3, 3))


def _features(n: int = 6, seed: int = 0, h: int = 8, w: int = 12) -> torch.Tensor:
    """Low-rank "normal" features with a smooth spatial layout (learnable structure), plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(3, 16, generator=g)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    coef = torch.stack([torch.sin(3 * ys), torch.cos(2 * xs), ys * xs])  # [3, h, w]
    x = torch.einsum("kc,khw->chw", basis, coef)[None].repeat(n, 1, 1, 1)
    return x + 0.05 * torch.randn(n, 16, h, w, generator=g)


def _layer(lca: bool, mlka: bool) -> RLRLayer:
    torch.manual_seed(0)
    return RLRLayer(8, 2, 2, HW, 3, lca, mlka).double().eval()


def test_mlka_output_ignores_tokens_in_its_masked_window() -> None:
    layer = _layer(lca=False, mlka=True)
    x, ref = torch.randn(1, N, 8, dtype=torch.float64), torch.randn(N, 8, dtype=torch.float64)
    i = 2 * HW[1] + 3
    neighbours = window_mask(*HW, 3)[i].clone()
    neighbours[i] = False  # the query token itself must stay
    x2 = x.clone()
    x2[:, neighbours] += torch.randn(int(neighbours.sum()), 8, dtype=torch.float64)
    assert torch.allclose(layer(x2, ref)[:, i], layer(x, ref)[:, i], atol=1e-12)
    x3 = x.clone()
    x3[:, 0] += 1.0  # far from i: MLKA reads it
    assert not torch.allclose(layer(x3, ref)[:, i], layer(x, ref)[:, i])


def test_lca_output_depends_on_the_reference_only_inside_the_window() -> None:
    layer = _layer(lca=True, mlka=False)
    x, ref = torch.randn(1, N, 8, dtype=torch.float64), torch.randn(N, 8, dtype=torch.float64)
    i = 2 * HW[1] + 3
    inside = window_mask(*HW, 3)[i]
    base = layer(x, ref)[:, i]
    ref_out, ref_in = ref.clone(), ref.clone()
    ref_out[~inside] += 3.0
    ref_in[inside] += 3.0
    assert torch.allclose(layer(x, ref_out)[:, i], base, atol=1e-12)
    assert not torch.allclose(layer(x, ref_in)[:, i], base)
    x2 = x.clone()
    x2[:, torch.arange(N) != i] += 3.0  # LCA never reads other tokens
    assert torch.allclose(layer(x2, ref)[:, i], base, atol=1e-12)


def test_reference_is_a_learnable_parameter_per_position() -> None:
    level = RLRLevel(LevelShape(6, 8, HW, 3, layers=1, heads=2, ff_mult=2), lca=True, mlka=True)
    assert level.reference.shape == (N, 6) and level.reference.requires_grad
    assert "reference" in dict(level.named_parameters())


def test_reference_has_its_own_embedding() -> None:
    """As the official code: the reference is projected by its own linear map, not the inputs' one."""
    level = RLRLevel(LevelShape(6, 8, HW, 3, layers=1, heads=2, ff_mult=2), lca=True, mlka=True).eval()
    assert level.ref_embed is not level.embed
    tokens = torch.randn(1, N, 8)
    before = level.encode(tokens)
    with torch.no_grad():
        level.embed.weight.add_(1.0)  # the inputs' projection: encode() of given tokens does not use it
    assert torch.equal(level.encode(tokens), before)
    with torch.no_grad():
        level.ref_embed.weight.add_(1.0)
    assert not torch.allclose(level.encode(tokens), before)


def test_embeddings_start_kaiming_normal_as_the_official_code() -> None:
    """Both token embeddings (inputs and reference) start with weights of std √(2 / fan-in), not PyTorch's
    default linear init (std √(1 / (3 · fan-in)), 2.45× smaller)."""
    torch.manual_seed(0)
    level = RLRLevel(LevelShape(112, 128, HW, 3, layers=1, heads=2, ff_mult=2), lca=True, mlka=True)
    for layer in (level.embed, level.ref_embed):
        assert float(layer.weight.detach().std()) == pytest.approx((2 / 112) ** 0.5, rel=0.05)


def test_attention_projections_start_as_the_official_multihead_attention() -> None:
    """The official code's ``nn.MultiheadAttention``: query, key and value weights xavier-uniform over their
    stacked ``[3w, w]`` matrix (bound √(6 / 4w)), every bias zero, the output weight nn.Linear's default;
    RLR's two attentions and RLR-selfref's alike."""
    width = 256
    torch.manual_seed(0)
    official = torch.nn.MultiheadAttention(width, 8).requires_grad_(False)
    bound = (6 / (4 * width)) ** 0.5
    assert float(official.in_proj_weight.abs().max()) == pytest.approx(bound, rel=0.01)
    layer = RLRLayer(width, 8, 2, HW, 3, lca=True, mlka=True)
    attn = SelfRefLayer(width, 8, 2, HW, 3)
    projections = [(p.q, p.k, p.v, p.o) for p in (layer.lca, layer.mlka)] + [(attn.qkv, attn.o)]
    for *inputs, out in projections:
        weights = torch.cat([p.weight.detach() for p in inputs])
        assert weights.shape == official.in_proj_weight.shape
        assert float(weights.abs().max()) == pytest.approx(bound, rel=0.01)
        assert float(weights.std()) == pytest.approx(float(official.in_proj_weight.std()), rel=0.02)
        assert all(float(p.bias.abs().max()) == 0 for p in (*inputs, out))
        assert float(out.weight.std()) == pytest.approx(float(official.out_proj.weight.std()), rel=0.05)


@pytest.mark.parametrize("cls", [RLR, RLRSelfRef])
def test_feed_forward_uses_gelu(cls: type) -> None:
    """The official ``Mlp`` activation, in RLR and in the RLR-selfref ablation alike."""
    model = cls(**TINY, epochs=1)
    model._build([(8, 12), (4, 6)])
    acts = [type(m) for m in model.nets_.modules() if isinstance(m, (torch.nn.GELU, torch.nn.ReLU))]
    assert acts and set(acts) == {torch.nn.GELU}


def test_position_embedding_distinguishes_positions() -> None:
    pos = sincos_position_2d((4, 6), 16)
    assert pos.shape == (24, 16)
    assert torch.cdist(pos, pos).add(torch.eye(24)).min() > 0


def test_jitter_std_follows_the_token_norm() -> None:
    x = torch.ones(2, 4000, 16) * torch.tensor([1.0, 10.0]).view(2, 1, 1)
    noise = feature_jitter(x, 4.0, 1.0, torch.Generator().manual_seed(0)) - x
    want = 4.0 * x.norm(dim=-1)[:, 0] / 16  # per-token std = scale · ‖f‖ / C
    assert torch.allclose(noise.std(dim=(1, 2)), want, rtol=0.05)
    assert torch.equal(feature_jitter(x, 4.0, 0.0, torch.Generator()), x)


MODELS_UNDER_TEST = [
    (RLR, {}),
    (RLR, {"use_lca": False}),
    (RLR, {"use_mlka": False}),
    (RLRSelfRef, {}),
]


@pytest.mark.parametrize(("cls", "flags"), MODELS_UNDER_TEST)
def test_non_square_grid_shapes_and_save_load(cls: type, flags: dict, tmp_path: Path) -> None:
    feats = _features(h=8, w=12)
    model = cls(**TINY, epochs=1, **flags).fit(feats)
    scores = model.predict(feats)  # one error map per level, on the level's own grid
    assert [tuple(s.shape) for s in scores] == [(6, 8, 12), (6, 4, 6)]
    assert all(torch.isfinite(s).all() and (s >= 0).all() for s in scores)
    assert model.level_hw_ == [(8, 12), (4, 6)]
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    config = json.loads(json.dumps(model.get_config()))
    loaded = cls.from_state(config, load_file(tmp_path / "m.safetensors"))
    assert all(map(torch.equal, loaded.predict(feats), scores))
    with pytest.raises(ReconadError):
        model.predict(_features(h=8, w=8))  # other grid than the one it was fitted on


def test_runs_and_checkpoints_share_one_state_dict(tmp_path: Path) -> None:
    """A checkpoint holds the run's very ``net.*`` weights; a run loads from it (extra keys ignored)."""
    feats = _features()
    model = RLR(**TINY, epochs=1).fit(feats, checkpoint_dir=tmp_path)
    run, ckpt = model.state_dict(), load_file(tmp_path / "rlr-epoch0001.safetensors")
    nets = {k: v for k, v in run.items() if k.startswith("net.")}
    assert set(run) - set(nets) == {"level_hw", "loss_history"}
    assert {k for k in ckpt if k.startswith("net.")} == set(nets)
    assert all(torch.equal(ckpt[k], v) for k, v in nets.items())
    loaded = RLR.from_state(model.get_config(), {**ckpt, "level_hw": run["level_hw"]})
    assert all(map(torch.equal, loaded.predict(feats), model.predict(feats)))


def test_jitter_is_drawn_in_raw_units_whatever_the_space() -> None:
    """The net sees standardised features plus noise of per-token std ``scale · ‖f_raw‖ / C`` in raw units,
    divided by ``feature_std`` (the official recipe's noise, whatever space the net works in)."""
    model = RLR(**TINY, epochs=1)
    model._build([(8, 12), (4, 6)])
    raw = [torch.randn(3, 96, 6) * 5 + 2, torch.randn(3, 24, 10) * 3]
    std = [torch.linspace(0.5, 4.0, 6), torch.linspace(1.0, 9.0, 10)]
    seen = []
    for net, s in zip(model.nets_, std, strict=True):
        net.feature_mean.fill_(1.0)
        net.feature_std.copy_(s)
        net.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach()))
    BatchLoss(model.nets_, raw, model, torch.device("cpu"), None)(torch.arange(3), torch.Generator())
    for net, x, got in zip(model.nets_, raw, seen, strict=True):
        noise = (got - net.standardise(x)) * net.feature_std  # back in raw units
        want = 4.0 * x.norm(dim=-1) / x.shape[-1]
        ratio = noise.std(dim=-1) / want
        assert abs(float(ratio.mean()) - 1) < 0.1


def test_the_score_is_the_reconstruction_error_of_the_standardised_tokens() -> None:
    feats = _features()
    model = RLR(**TINY, epochs=1).fit(feats)
    levels = model.tokens(feats)
    with torch.no_grad():
        want = []
        for net, x in zip(model.nets_, levels, strict=True):
            mean, std = x.reshape(-1, x.shape[-1]).mean(0), x.reshape(-1, x.shape[-1]).std(0)
            torch.testing.assert_close(net.feature_mean, mean)
            torch.testing.assert_close(net.feature_std, std)
            z = (x - mean) / std
            want.append(reconstruction_error(z, net(z)))
    for got, w, hw in zip(model.predict(feats), want, model.level_hw_, strict=True):
        torch.testing.assert_close(got, w.view(-1, *hw))


def test_features_are_standardised_per_channel() -> None:
    """Scaling the features by a power of two (exact in floating point) changes neither training nor scores
    (a per-channel scaling would: the jitter follows the raw token norm, as the official recipe)."""
    feats = _features()
    scale = 8.0
    a = RLR(**TINY, epochs=2).fit(feats)
    b = RLR(**TINY, epochs=2).fit(feats * scale)
    assert all(map(torch.equal, a.predict(feats), b.predict(feats * scale)))
    assert not torch.equal(b.nets_[0].feature_std, torch.ones(6))  # statistics stored with the weights
    assert "net.0.feature_mean" in b.state_dict()


@pytest.mark.parametrize(("cls", "flags"), MODELS_UNDER_TEST)
def test_training_reduces_the_loss(cls: type, flags: dict) -> None:
    model = cls(**TINY, epochs=12, lr=3e-3, lr_schedule="constant", jitter_scale=1.0, **flags)
    model.fit(_features(n=8))
    first, last = model.loss_history_[0], model.loss_history_[-1]
    assert last < 0.6 * first


def test_anomalous_patch_scores_higher() -> None:
    feats = _features(n=8)
    model = RLR(**TINY, epochs=30, lr=3e-3, lr_schedule="constant", jitter_scale=1.0).fit(feats)
    test = _features(n=1, seed=5)
    test[:, :, 2:4, 4:6] += 3.0 * torch.randn(16, 1, 1, generator=torch.Generator().manual_seed(1))
    scores = anomaly_maps(model.predict(test), (8, 12), sigma=0, align_corners=model.align_corners)[0]
    inside = scores[2:4, 4:6].mean()
    far = torch.cat([scores[:, :2].flatten(), scores[:, 8:].flatten()]).mean()
    assert inside > 2 * far


def _train(
    epochs: int,
    ckpt: Path | None,
    resume: bool = False,
    schedule: str = "constant",
) -> RLR:
    model = RLR(**TINY, epochs=epochs, lr=1e-3, lr_schedule=schedule)
    return model.fit(_features(), checkpoint_dir=ckpt, resume=resume)


def test_learning_rate_schedules() -> None:
    assert [learning_rate(1e-3, "constant", s, 100) for s in (0, 50, 99)] == [1e-3] * 3
    assert learning_rate(1e-3, "cosine", 0, 100) == pytest.approx(1e-3)
    assert learning_rate(1e-3, "cosine", 50, 100) == pytest.approx(5e-4)
    assert 0 < learning_rate(1e-3, "cosine", 99, 100) < 1e-6
    rates = [learning_rate(1e-3, "cosine", s, 100) for s in range(100)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert RLR(**TINY).get_config()["lr_schedule"] == "cosine"
    assert [learning_rate(1e-3, "step", s, 100) for s in (0, 79, 80, 99)] == [1e-3, 1e-3, 1e-4, 1e-4]
    with pytest.raises(ReconadError, match="lr_schedule"):
        RLR(**TINY, lr_schedule="linear")


def test_cosine_schedule_changes_training() -> None:
    constant, cosine = _train(2, None), _train(2, None, schedule="cosine")
    assert not torch.equal(constant.state_dict()["net.0.reference"], cosine.state_dict()["net.0.reference"])


#: The two training recipes a resume must repeat exactly (the checkpoint code is shared; the recipe is not):
#: RLR's (jitter from the seeded generator, Adam; on the cosine schedule, which must go on from the step
#: reached) and UniAD's own (AdamW, clipping, the step schedule and dropout seeded from that generator).
#: RLR-selfref trains with RLR's recipe.
RESUMABLE = {
    "rlr": {**TINY, "lr": 1e-3, "lr_schedule": "cosine"},
    "uniad": dict(
        level_channels=(6, 10), level_grids=(8, 4), width=16, heads=2, encoder_layers=1, decoder_layers=1,
        ff_dim=32, window=3, device="cpu",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_equals_an_uninterrupted_run(tmp_path: Path, name: str) -> None:
    """The single-process checkpoint/resume mechanism, once per training recipe (torchrun's:
    ``test_distributed.py::test_resume_under_torchrun_ends_with_the_uninterrupted_weights``)."""

    def stop_after_epoch_2(epoch: int, total: int, loss: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    full = create_model(name, **RESUMABLE[name], epochs=3).fit(_features())
    with pytest.raises(KeyboardInterrupt):  # dies after epoch 2 was checkpointed
        create_model(name, **RESUMABLE[name], epochs=3).fit(
            _features(), checkpoint_dir=tmp_path, progress=stop_after_epoch_2
        )
    meta = json.loads((tmp_path / f"{name}-checkpoint.json").read_text())
    assert meta["epoch"] == 2 and len(meta["losses"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{name}-checkpoint.json",
        f"{name}-epoch0002.safetensors",
    ]
    calls: list[int] = []
    resumed = create_model(name, **RESUMABLE[name], epochs=3).fit(
        _features(), checkpoint_dir=tmp_path, resume=True, progress=lambda e, t, loss: calls.append(e)
    )
    assert calls == [3]  # only the missing epoch was trained
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert resumed.loss_history_ == full.loss_history_


def test_resume_refuses_other_hyper_parameters_or_data(tmp_path: Path) -> None:
    _train(1, tmp_path)
    with pytest.raises(ReconadError, match="hyper-parameters"):
        RLR(**{**TINY, "heads": 4}, epochs=2).fit(_features(), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ReconadError, match="other features"):
        RLR(**TINY, epochs=2, lr=1e-3, lr_schedule="constant").fit(
            _features(seed=9), checkpoint_dir=tmp_path, resume=True
        )
    meta = tmp_path / "rlr-checkpoint.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 1}))  # an older state format
    with pytest.raises(ReconadError, match="older reconad"):
        _train(2, tmp_path, resume=True)


def test_registry_and_contract_errors() -> None:
    assert MODELS["rlr"] is RLR and MODELS["rlr-selfref"] is RLRSelfRef
    model = create_model("rlr", level_channels=(6, 10), level_grids=(8, 4), k=5, use_mlka=False)
    assert model.get_config()["use_mlka"] is False and RLR.unified and RLRSelfRef.unified
    # the same parameters by name, in order
    assert list(RLR().get_config()) == [*RLRSelfRef().get_config(), "use_lca", "use_mlka"]
    with pytest.raises(ReconadError):
        RLR(use_lca=False, use_mlka=False)
    with pytest.raises(ReconadError, match="not fitted"):
        RLR(**TINY).predict(_features())
    with pytest.raises(ReconadError, match="expects features"):
        RLR(**TINY).fit(torch.zeros(2, 5, 8, 8))
