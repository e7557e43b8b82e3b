import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from reconad.errors import ReconadError
from reconad.scoring import anomaly_maps, gaussian_blur, image_scores


def test_shapes_square_and_rectangular():
    p = torch.rand(3, 8, 8)
    assert anomaly_maps(p, 32).shape == (3, 32, 32)
    assert anomaly_maps(p, (20, 30), sigma=2.0).shape == (3, 20, 30)
    assert anomaly_maps(p, 32).dtype == torch.float32


def test_sigma_zero_is_plain_bilinear_upsampling():
    p = torch.rand(2, 6, 5)
    expected = F.interpolate(p[:, None], size=(24, 20), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(anomaly_maps(p, (24, 20), sigma=0.0), expected)
    torch.testing.assert_close(anomaly_maps(p, (6, 5), sigma=0.0), p)


@pytest.mark.parametrize("shape", [(7, 9), (3, 2), (1, 4), (40, 33)])
def test_blur_matches_scipy_reflect(shape):
    """torch's reflect padding is scipy's "mirror" mode; radius 4σ is scipy's truncate=4 (also when the
    radius exceeds the side and the signal must be reflected several times)."""
    rng = np.random.default_rng(0)
    x = rng.random((2, *shape))
    got = gaussian_blur(torch.from_numpy(x), sigma=2.0).numpy()
    expected = np.stack([gaussian_filter(m, 2.0, mode="mirror", truncate=4.0) for m in x])
    np.testing.assert_allclose(got, expected, atol=1e-12)


@pytest.mark.parametrize(
    ("grid", "size", "sigma"),
    [((32, 32), (256, 256), 4.0), ((7, 5), (40, 23), 2.0), ((16, 12), (9, 30), 4.0)],
)
def test_maps_are_upsampling_then_blur(grid, size, sigma):
    """The one-matrix-per-axis maps equal their definition: bilinear upsampling, then the Gaussian blur."""
    p = torch.rand(3, *grid, dtype=torch.float64) * 10
    up = F.interpolate(p[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    got = anomaly_maps(p.float(), size, sigma).double()
    torch.testing.assert_close(got, gaussian_blur(up, sigma), rtol=1e-5, atol=1e-5)  # float32 rounding


@pytest.mark.parametrize("sigma", [4.0, 0.0])
def test_level_maps_are_each_resized_once_then_averaged_then_blurred(sigma):
    """The unified models' form (official RLR): every level's map resized once to the image with
    ``align_corners=True``, the levels averaged, then the Gaussian blur."""
    levels = [torch.rand(2, 32, 32, dtype=torch.float64), torch.rand(2, 16, 16, dtype=torch.float64)]
    up = [F.interpolate(x[:, None], size=256, mode="bilinear", align_corners=True)[:, 0] for x in levels]
    want = gaussian_blur(torch.stack(up).mean(dim=0), sigma)
    got = anomaly_maps([x.float() for x in levels], 256, sigma, align_corners=True).double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    one = anomaly_maps([levels[0].float()], 256, sigma, align_corners=True).double()
    torch.testing.assert_close(one, gaussian_blur(up[0], sigma), rtol=1e-5, atol=1e-5)


def test_constant_input_stays_constant():
    for size in (64, (5, 3)):
        maps = anomaly_maps(torch.full((2, 4, 4), 3.5), size, sigma=4.0)
        torch.testing.assert_close(maps, torch.full_like(maps, 3.5))


def test_single_hot_patch_peaks_at_its_place():
    p = torch.zeros(1, 8, 8)
    p[0, 2, 5] = 1.0
    maps = anomaly_maps(p, 64, sigma=4.0)
    row, col = divmod(int(maps[0].argmax()), 64)
    assert 16 <= row < 24 and 40 <= col < 48  # the hot patch covers pixels [16, 24) x [40, 48)
    assert maps[0, 0, 0] < 1e-3 * maps.max()


def test_image_scores_reductions():
    m = torch.arange(400, dtype=torch.float32).reshape(1, 20, 20).repeat(2, 1, 1)
    m[1] = 1.0
    torch.testing.assert_close(image_scores(m), torch.tensor([399.0, 1.0]))
    torch.testing.assert_close(image_scores(m, "mean"), torch.tensor([199.5, 1.0]))
    # top 1 % of 400 pixels = the 4 largest
    torch.testing.assert_close(image_scores(m, "topk_mean"), torch.tensor([397.5, 1.0]))
    # fewer than 100 pixels: at least one pixel, so the max
    assert image_scores(torch.rand(3, 5, 5), "topk_mean").shape == (3,)
    small = torch.rand(3, 5, 5)
    torch.testing.assert_close(image_scores(small, "topk_mean"), image_scores(small, "max"))


def test_bad_inputs_raise_reconad_error():
    with pytest.raises(ReconadError, match="unknown image score reduction"):
        image_scores(torch.rand(1, 4, 4), "median")
    with pytest.raises(ReconadError, match=r"\[N, h, w\]"):
        anomaly_maps(torch.rand(4, 4), 8)
    with pytest.raises(ReconadError, match=r"\[N, h, w\]"):
        anomaly_maps([], 8)
    with pytest.raises(ReconadError, match="sigma"):
        anomaly_maps(torch.rand(1, 4, 4), 8, sigma=-1.0)
