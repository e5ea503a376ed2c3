"""Each tensor op against the library call the authors use (OpenCV, SciPy, torchvision)."""

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torchvision.transforms import Resize

from usad.core.ops import gaussian_blur, grid_side, minmax_normalize, opencv_gaussian_blur, resize_bilinear, resize_images


@pytest.fixture
def maps():
    return torch.rand(3, 25, 25, generator=torch.Generator().manual_seed(0))


def test_resize_bilinear_equals_cv2_inter_linear(maps):
    ours = resize_bilinear(maps, 350).numpy()
    for m, o in zip(maps.numpy(), ours):
        np.testing.assert_allclose(o, cv2.resize(m, (350, 350), interpolation=cv2.INTER_LINEAR), atol=1e-5)


def test_resize_images_equals_torchvision_resize():
    x = torch.randn(2, 3, 406, 406, generator=torch.Generator().manual_seed(1))
    for size in (350, 238):
        np.testing.assert_allclose(resize_images(x, size).numpy(), Resize(size)(x).numpy(), atol=1e-5)
    assert resize_images(x, 406) is x


@pytest.mark.parametrize("sigma", [1.0, 4.0])
@pytest.mark.parametrize("shape", [(3, 60, 60), (2, 350, 350), (1, 7, 9)])
def test_gaussian_blur_equals_scipy(sigma, shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(2))
    ours = gaussian_blur(x, sigma).numpy()
    for m, o in zip(x.numpy().astype(np.float64), ours):
        np.testing.assert_allclose(o, gaussian_filter(m, sigma=sigma), atol=1e-5)


def test_opencv_blur_equals_cv2_gaussian_blur():
    x = torch.rand(2, 406, 406, generator=torch.Generator().manual_seed(3))
    ours = opencv_gaussian_blur(x, 5, 1.0).numpy()
    for m, o in zip(x.numpy(), ours):
        np.testing.assert_allclose(o, cv2.GaussianBlur(m, (5, 5), 1.0), atol=1e-6)


def test_minmax_normalize_and_constant_map():
    x = torch.stack([torch.linspace(2, 5, 16).view(4, 4), torch.full((4, 4), 3.0)])
    out = minmax_normalize(x)
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.equal(out[1], torch.zeros(4, 4))
    assert torch.isfinite(out).all()


def test_grid_side():
    assert grid_side(625) == 25
    with pytest.raises(ValueError, match="square"):
        grid_side(600)
