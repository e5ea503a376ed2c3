"""Datasets on a generated CoalAD-layout folder: order, sizes, labels, masks, exact transforms."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from usad.core.data import dataset as D
from usad.core.data.dataset import IMAGENET_MEAN, IMAGENET_STD, DatasetError, TrainDataset, mask_path_for, train_samples
from usad.core.data.synthetic import make_synthetic_coalad


@pytest.fixture(scope="module")
def coal(tmp_path_factory):
    return make_synthetic_coalad(tmp_path_factory.mktemp("data"), n_train=6, n_test_good=3, n_test_anomalous=5,
                                 size=120, seed=3)


def test_order_is_imagefolder_order(coal):
    tv = [p for p, _ in __import__("torchvision").datasets.ImageFolder(str(coal / "test")).samples]
    assert [str(s.path) for s in D.test_samples(coal)] == tv
    tv_train = [p for p, _ in __import__("torchvision").datasets.ImageFolder(str(coal / "train")).samples]
    assert [str(s.path) for s in train_samples(coal)] == tv_train


def test_labels_kinds_and_mask_paths(coal):
    samples = D.test_samples(coal)
    assert sum(s.label for s in samples) == 5 and len(samples) == 8
    for s in samples:
        assert s.label == (s.kind != "good")
        assert (s.mask_path is None) == (s.kind == "good")
        if s.label:
            assert s.mask_path == mask_path_for(coal, s.path) and s.mask_path.is_file()


def reference_train(size):  # the reference's words: shorter-side resize, bilinear (default), ToTensor, normalise
    return transforms.Compose([transforms.Resize(size), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def test_train_transform_equals_torchvision_resize(coal):
    ds = TrainDataset(coal, 70)
    assert len(ds) == 6
    x = ds[2]
    assert x.shape == (3, 70, 70)
    ref = reference_train(70)(Image.open(ds.samples[2].path).convert("RGB"))
    assert torch.equal(x, ref)


def test_test_transform_bicubic_and_nearest_masks(coal):
    ds = D.TestDataset(coal, 98)
    item = ds[0]  # first anomalous kind in sorted order
    s = ds.samples[0]
    ref = transforms.Compose([transforms.Resize(98, interpolation=transforms.InterpolationMode.BICUBIC),
                              transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.equal(item["image"], ref(Image.open(s.path).convert("RGB")))
    ref_mask = transforms.ToTensor()(transforms.Resize(98, interpolation=transforms.InterpolationMode.NEAREST)(Image.open(s.mask_path)))[0]
    assert torch.equal(item["mask"], ref_mask)  # 0/255 masks -> {0, 1}
    assert set(np.unique(item["mask"].numpy())) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert item["label"] == 1


def test_normal_images_get_empty_masks(coal):
    ds = D.TestDataset(coal, 64)
    normal = [i for i, s in enumerate(ds.samples) if s.label == 0]
    assert normal and all(ds[i]["mask"].sum() == 0 and ds[i]["mask"].shape == (64, 64) for i in normal)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_synthetic_coalad(tmp_path, n_train=3, n_test_good=2, n_test_anomalous=2, size=48)
    (root / "train" / "good" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "good" / "notes.txt").write_text("hello")
    (root / "test" / ".hidden").mkdir()
    assert len(train_samples(root)) == 3
    assert len(D.test_samples(root)) == 4


def test_missing_folders_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        train_samples(tmp_path / "nowhere")
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no training images"):
        train_samples(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no test images"):
        D.test_samples(tmp_path / "empty")
