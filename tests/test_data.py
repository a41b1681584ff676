import dataclasses
import gzip
import os

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trainkit.data import (
    FASHION_MNIST_CLASSES,
    SHAPES32_CLASSES,
    DataConfig,
    ImageData,
    ImageDataset,
    export_shapes32,
    holdout_indices,
    load_shapes32,
    read_idx,
)
from trainkit.data.dataset import LazyImages
from trainkit.data.fingerprints import stable_hash
from trainkit.data.shapes import draw_images, main as shapes_main, sample_specs
from trainkit.data.transforms import ImageTransform

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """Keep the `datasets` cache of each test inside its tmp dir."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def small(**kw) -> DataConfig:
    return DataConfig(**{"max_train_samples": 64, "max_val_samples": 32, **kw})


def write_png(path, size, color, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


@pytest.fixture
def class_folder(tmp_path):
    """cat/ holds RGB images, dog/ grayscale ones, all 8x8."""
    root = tmp_path / "folder"
    for i in range(3):
        write_png(root / "cat" / f"{i}.png", (8, 8), (200, 100, 50 + i), "RGB")
        write_png(root / "dog" / f"{i}.png", (8, 8), 30 * i, "L")
    return root


def idx_bytes(magic: int, shape, payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
    return header + payload


# ----------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_default_splits():
    splits = ImageData(DataConfig()).splits()
    assert (len(splits.train), len(splits.val)) == (60000, 10000)
    assert splits.num_classes == 10 and splits.class_names == FASHION_MNIST_CLASSES
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert splits.channels == 1 and splits.image_size == (28, 28)
    assert splits.train.images_uint8.shape == (60000, 1, 28, 28)
    assert splits.train.images_uint8.dtype == torch.uint8
    image, label = splits.train[0]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert isinstance(label, int) and 0 <= label <= 9
    for ds in (splits.train, splits.val):
        assert ds.labels.dtype == torch.long
        assert sorted(ds.labels.unique().tolist()) == list(range(10))
        assert torch.bincount(ds.labels).tolist() == [len(ds) // 10] * 10
    images, _ = splits.val.get_batch(torch.arange(256))
    assert images.min() == -1.0 and images.max() == 1.0
    assert isinstance(splits.source, str) and "fashion_mnist" in splits.source


def test_fashion_mnist_named_split_and_stable_source():
    test = ImageData(DataConfig()).split("test")
    assert len(test) == 10000
    for name in ("val", "validation"):  # the split serving as validation: here "test", capped
        assert len(ImageData(DataConfig(max_val_samples=7)).split(name)) == 7
    again = ImageData(DataConfig()).split("test")
    assert test.source == again.source
    assert torch.equal(test.images_uint8, again.images_uint8)
    assert ImageData(DataConfig(image_size=32)).split("test").source != test.source


def test_fashion_mnist_rgb_channels_equal():
    splits = ImageData(small(channels=3)).splits()
    image, _ = splits.train[3]
    assert image.shape == (3, 28, 28)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_resize_and_pad_to_32():
    native = ImageData(small()).split("train").images_uint8
    resized = ImageData(small(image_size=32)).split("train")
    assert resized.images_uint8.shape == (64, 1, 32, 32)
    x, _ = resized[0]
    assert x.shape == (1, 32, 32) and -1 <= x.min() and x.max() <= 1
    assert abs(resized.images_uint8.float().mean() - native.float().mean()) < 2
    padded = ImageData(small(image_size=32, resize_mode="pad")).split("train").images_uint8
    assert torch.equal(padded[:, :, 2:30, 2:30], native)
    border = padded.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0


def test_indivisible_size_errors():
    with pytest.raises(ValueError, match=r"28x28.*factor 8.*data.image_size.*32.*pad"):
        ImageData(small(), downsample_factor=8).splits()
    with pytest.raises(ValueError, match=r"data.image_size=30.*factor 4.*32"):
        ImageData(small(image_size=30), downsample_factor=4).splits()
    assert ImageData(small(image_size=32), downsample_factor=8).splits().image_size == (32, 32)


def test_pad_smaller_than_image_errors():
    with pytest.raises(ValueError, match="resize_mode=resize"):
        ImageData(small(image_size=16, resize_mode="pad")).splits()


def test_missing_idx_files(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*FASHION_MNIST_DIR"):
        ImageData(DataConfig()).splits()


def test_idx_reader_validates(tmp_path):
    good = tmp_path / "good-idx1-ubyte.gz"
    good.write_bytes(gzip.compress(idx_bytes(0x801, [3], bytes([1, 2, 3]))))
    assert read_idx(good).tolist() == [1, 2, 3]
    cases = {
        "magic": idx_bytes(0x12345678, [3], bytes(3)),
        "truncated": idx_bytes(0x803, [2, 4, 4], bytes(20)),
    }
    for name, raw in cases.items():
        path = tmp_path / f"{name}.gz"
        path.write_bytes(gzip.compress(raw))
        with pytest.raises(ValueError, match="corrupt IDX"):
            read_idx(path)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(idx_bytes(0x801, [3], bytes(3)))[:-6])
    with pytest.raises(ValueError, match="corrupt IDX"):
        read_idx(broken)


def test_lazy_matches_in_memory():
    cfg = small(image_size=32, channels=3)
    eager = ImageData(cfg).split("train")
    lazy = ImageData(dataclasses.replace(cfg, in_memory_max_mb=0)).split("train")
    assert lazy.images_uint8 is None and len(lazy) == len(eager)
    for i in (0, 17, -1):
        assert torch.equal(lazy[i][0], eager[i][0]) and lazy[i][1] == eager[i][1]
    assert torch.equal(lazy.get_batch([1, 2])[0], eager.get_batch([1, 2])[0])


# ----------------------------------------------------------------------------- shapes32


def shapes32_pixels(split: str) -> np.ndarray:
    """uint8 [N, 32, 32, 3] of a shapes32 split, decoded straight from its PNG column."""
    return np.stack([np.asarray(image) for image in load_shapes32()[split]["image"]])


def test_shapes32_is_generated_identically_every_time():
    first = load_shapes32()
    load_shapes32.cache_clear()
    second = load_shapes32()
    assert first is not second and sorted(first) == sorted(second) == ["test", "train"]
    for split in first:
        assert first[split].data.table.equals(second[split].data.table)  # the same PNG bytes and labels
        assert first[split]._fingerprint == second[split]._fingerprint
    assert first["train"]._fingerprint != first["test"]._fingerprint
    specs = sample_specs(40, seed=5)
    assert draw_images(specs).tobytes() == draw_images(sample_specs(40, seed=5)).tobytes()
    assert draw_images(specs).tobytes() != draw_images(sample_specs(40, seed=6)).tobytes()


def test_shapes32_splits_through_image_data():
    data = ImageData(DataConfig(dataset="shapes32", channels=3))
    splits = data.splits()
    assert (len(splits.train), len(splits.val)) == (9000, 1500)  # val: the test split
    assert splits.class_names == SHAPES32_CLASSES == ["circle", "square", "triangle"]
    assert splits.channels == 3 and splits.image_size == (32, 32)
    assert torch.bincount(splits.train.labels).tolist() == [3000] * 3
    assert torch.bincount(splits.val.labels).tolist() == [500] * 3
    image, label = splits.train[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32) and label in (0, 1, 2)
    images, _ = splits.val.get_batch(torch.arange(500))
    assert -1 <= images.min() < -0.9 and 0.9 < images.max() <= 1
    assert not torch.equal(images[:, 0], images[:, 2])  # colour, not grey
    assert torch.equal(splits.train.images_uint8[5].permute(1, 2, 0), torch.from_numpy(shapes32_pixels("train")[5]))
    assert splits.source == ImageData(DataConfig(dataset="shapes32", channels=3)).fingerprint()
    assert "shapes32" in splits.source
    gray = ImageData(DataConfig(dataset="shapes32", max_train_samples=8)).split("train")
    assert gray.image_shape == (1, 32, 32) and gray.source != splits.train.source


def test_shapes32_colours_span_the_hue_circle_and_stand_out():
    pixels = shapes32_pixels("train")
    hsv = np.asarray(Image.fromarray(pixels.reshape(-1, 32, 3)).convert("HSV")).reshape(-1, 3).astype(np.int64)
    vivid = hsv[(hsv[:, 1] > 160) & (hsv[:, 2] > 160)]
    share = np.bincount(vivid[:, 0] * 12 // 256, minlength=12) / len(vivid)
    assert share.min() > 0.03, share  # every 30 degrees of hue
    rgb = pixels.reshape(-1, 3).astype(np.int64)
    blue = (rgb[:, 2] >= 220) & (rgb[:, 0] <= 60) & (rgb[:, 1] <= 60)
    assert blue.mean() > 0.002
    # the top row is always background; the shape's colour is the pixel farthest from it
    background = pixels[:, :1, :1, :].astype(np.float64) / 255
    assert (pixels[:, 0, :, :] == pixels[:, :1, 0, :]).all()
    distance = np.linalg.norm(pixels / 255 - background, axis=-1).reshape(len(pixels), -1)
    assert distance.max(axis=1).min() >= 0.39
    covered = (distance > 0.2).mean(axis=1)
    assert 0.03 < covered.min() and covered.max() < 0.6
    brightness = pixels.max(axis=-1)
    assert (brightness < 40).any() and (pixels.min(axis=-1) > 215).any()  # dark and light colours too


def test_shapes32_exports_to_an_image_folder_that_loads_back(tmp_path):
    shapes_main(["--export", str(tmp_path / "shapes"), "--limit", "30"])
    for split in ("train", "test"):
        assert sorted(p.name for p in (tmp_path / "shapes" / split).iterdir()) == SHAPES32_CLASSES
    folder = ImageData(DataConfig(dataset=str(tmp_path / "shapes"), channels=3)).splits()
    assert folder.class_names == SHAPES32_CLASSES and (len(folder.train), len(folder.val)) == (30, 30)
    original = ImageData(DataConfig(dataset="shapes32", channels=3, max_train_samples=30, max_val_samples=30)).splits()

    def rows(ds):
        return sorted((int(label), image.numpy().tobytes()) for image, label in zip(ds.images_uint8, ds.labels))
    assert rows(folder.train) == rows(original.train) and rows(folder.val) == rows(original.val)
    assert export_shapes32(tmp_path / "again", limit=2) == tmp_path / "again"
    assert len(list((tmp_path / "again").rglob("*.png"))) == 4
    with pytest.raises(FileExistsError, match="not empty"):
        export_shapes32(tmp_path / "again", limit=1)


# ----------------------------------------------------------------------------- other sources


def test_image_folder_with_classes(class_folder):
    splits = ImageData(DataConfig(dataset=str(class_folder), val_fraction=0.34)).splits()
    assert splits.class_names == ["cat", "dog"] and splits.num_classes == 2
    assert (len(splits.train), len(splits.val)) == (4, 2)
    assert splits.image_size == (8, 8) and splits.train.images_uint8.shape[1:] == (1, 8, 8)
    everything = torch.cat([splits.train.labels, splits.val.labels])
    assert sorted(everything.tolist()) == [0, 0, 0, 1, 1, 1]
    rgb_cfg = DataConfig(dataset=str(class_folder), channels=3, val_split="holdout", val_fraction=0.5)
    rgb = ImageData(rgb_cfg).split("train")
    for image, label in (rgb[i] for i in range(len(rgb))):
        assert image.shape == (3, 8, 8)
        if label == 1:  # grayscale source images become equal RGB channels
            assert torch.equal(image[0], image[2])
        else:
            assert image[0].mean() > image[2].mean()


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(6):
        write_png(tmp_path / "flat" / f"{i}.png", (12, 12), 40 * i, "L")
    splits = ImageData(DataConfig(dataset=str(tmp_path / "flat"), image_size=16, resize_mode="pad")).splits()
    assert splits.num_classes is None and splits.class_names is None
    assert len(splits.train) + len(splits.val) == 6
    assert (splits.train.labels == -1).all() and splits.train[0][1] == -1
    assert splits.train[0][0].shape == (1, 16, 16)


def test_mixed_native_sizes_need_image_size(tmp_path):
    write_png(tmp_path / "mixed" / "a.png", (8, 8), 10, "L")
    write_png(tmp_path / "mixed" / "b.png", (16, 8), 10, "L")
    with pytest.raises(ValueError, match="set data.image_size"):
        ImageData(DataConfig(dataset=str(tmp_path / "mixed"), val_fraction=0.5)).splits()
    splits = ImageData(DataConfig(dataset=str(tmp_path / "mixed"), val_fraction=0.5, image_size=8)).splits()
    assert splits.image_size == (8, 8)


def test_parquet_file(tmp_path):
    images = [Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)) for i in range(10)]
    path = tmp_path / "data.parquet"
    datasets.Dataset.from_dict({"image": images, "label": list(range(10))}).to_parquet(str(path))
    splits = ImageData(DataConfig(dataset=str(path), channels=3, val_fraction=0.2)).splits()
    assert (len(splits.train), len(splits.val)) == (8, 2)
    assert splits.num_classes == 10 and splits.class_names is None
    image, label = splits.train[0]
    expected = torch.tensor([label, 2 * label, 3 * label]) / 127.5 - 1
    assert torch.allclose(image[:, 0, 0], expected)


def test_parquet_folder_uses_split_names_and_class_labels(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    for split, n in (("train", 6), ("test", 3)):
        data = {"image": [Image.new("L", (8, 8), i) for i in range(n)], "label": [i % 2 for i in range(n)]}
        path = tmp_path / "pq" / f"{split}-00000-of-00001.parquet"
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    splits = ImageData(DataConfig(dataset=str(tmp_path / "pq"))).splits()
    assert (len(splits.train), len(splits.val)) == (6, 3)
    assert splits.class_names == ["a", "b"]
    assert len(ImageData(DataConfig(dataset=str(tmp_path / "pq" / "*.parquet"))).split("test")) == 3


def test_holdout_is_deterministic_and_disjoint(tmp_path):
    train, val = holdout_indices(1000, 0.05, seed=3)
    assert len(val) == 50 and len(train) == 950
    assert not set(train.tolist()) & set(val.tolist())
    assert all(np.array_equal(a, b) for a, b in zip((train, val), holdout_indices(1000, 0.05, seed=3)))
    assert not np.array_equal(val, holdout_indices(1000, 0.05, seed=4)[1])

    images = [Image.new("L", (4, 4), i) for i in range(40)]
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict({"image": images, "label": list(range(40))}).to_parquet(str(path))
    cfg = DataConfig(dataset=str(path), val_fraction=0.25, split_seed=7)
    first, second = ImageData(cfg).splits(), ImageData(cfg).splits()
    assert (len(first.train), len(first.val)) == (30, 10)
    assert torch.equal(first.val.labels, second.val.labels) and first.source == second.source
    assert not set(first.train.labels.tolist()) & set(first.val.labels.tolist())
    assert torch.equal(ImageData(cfg).split("train").labels, first.train.labels)
    capped = ImageData(dataclasses.replace(cfg, max_train_samples=5)).splits()
    assert torch.equal(capped.train.labels, first.train.labels[:5])



def test_reopening_a_parquet_source_reuses_the_datasets_cache(tmp_path):
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4), i) for i in range(6)],
                                "label": list(range(6))}).to_parquet(str(path))
    cache = tmp_path / "hf-cache"
    first = ImageData(DataConfig(dataset=str(path)))
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in files]
    assert any(p.suffix == ".arrow" for p in files)
    second = ImageData(DataConfig(dataset=str(path)))
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == files
    assert [p.stat().st_mtime_ns for p in files] == mtimes            # nothing regenerated
    assert second.source.splits["train"].cache_files == first.source.splits["train"].cache_files
    assert second.fingerprint() == first.fingerprint()

def test_missing_image_column(tmp_path):
    path = tmp_path / "pixels.parquet"
    datasets.Dataset.from_dict({"img": [Image.new("L", (4, 4))] * 2, "label": [0, 1]}).to_parquet(str(path))
    with pytest.raises(ValueError, match=r"'image'.*\['img', 'label'\].*data.image_column"):
        ImageData(DataConfig(dataset=str(path))).splits()


def test_hub_id_goes_through_load_dataset(monkeypatch):
    calls = []

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y", "z"])})

    def make(n):
        images = [Image.new("RGB", (8, 8), (i, i, i)) for i in range(n)]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return datasets.DatasetDict({"train": make(6), "validation": make(3), "test": make(4)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = ImageData(DataConfig(dataset="someone/tiny-images", config_name="small", revision="v1")).splits()
    assert calls == [("someone/tiny-images", {"name": "small", "revision": "v1"})]
    assert (len(splits.train), len(splits.val)) == (6, 3)
    assert splits.class_names == ["x", "y", "z"]
    assert "someone/tiny-images" in splits.source
    assert len(ImageData(DataConfig(dataset="someone/tiny-images")).split("test")) == 4

    calls.clear()
    for missing in ("./no/such/folder", "/no/such/file.parquet"):
        with pytest.raises(FileNotFoundError, match="no such file"):
            ImageData(DataConfig(dataset=missing)).splits()
    assert calls == []


def test_image_dataset_from_tensor():
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    ds = ImageDataset(images)
    image, label = ds[2]
    assert label == -1 and torch.allclose(image, images[2].float() / 127.5 - 1)
    assert ds.image_shape == (3, 8, 8) and len(ds) == 5


# ----------------------------------------------------------------------------- the entry point and fingerprints


def test_fingerprints_match_datasets_and_need_no_decoding(tmp_path, monkeypatch):
    images = [Image.new("L", (4, 4), i) for i in range(40)]
    path = tmp_path / "rows.parquet"
    datasets.Dataset.from_dict({"image": images, "label": list(range(40))}).to_parquet(str(path))
    cfg = DataConfig(dataset=str(path), val_fraction=0.25, split_seed=7, max_train_samples=20, image_size=8,
                     resize_mode="pad")
    data = ImageData(cfg, downsample_factor=2)
    splits = data.splits()
    assert data.fingerprint() == data.fingerprint("train", "val") == splits.source
    assert data.fingerprint("train") == splits.train.source and data.fingerprint("val") == splits.val.source
    assert (data.image_size, data.channels, data.num_classes) == ((8, 8), 1, 40)

    def fail(*args, **kwargs):
        raise AssertionError("a fingerprint decoded images")
    monkeypatch.setattr(LazyImages, "materialise", fail)
    monkeypatch.setattr(LazyImages, "__getitem__", fail)
    again = ImageData(cfg, downsample_factor=2)
    assert again.fingerprint() == splits.source and again.fingerprint("val") == splits.val.source
    # the cache key format that token caches and reference statistics are keyed by
    key = f"parquet:{path}|L|8x8|pad|image=image|label=label"
    text = f"{key}|train=train-holdout(0.25,seed=7)[:20],val=train/holdout(0.25,seed=7)"
    st = os.stat(path)
    assert splits.source == f"{text}#{stable_hash(text, stable_hash((str(path), st.st_size, st.st_mtime_ns)))}"
    assert splits.val.source.startswith(f"{key}|train/holdout(0.25,seed=7)#")
    assert stable_hash("fashion_mnist", "train", "x") == "0af7d931cba27d84"


def test_unknown_split_names_the_available_ones():
    with pytest.raises(ValueError, match=r"split 'dev2' not found.*\['train', 'val', 'test'\]"):
        ImageData(small()).fingerprint("dev2")


def reference_transform(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """The crop/resize/pad the data layer has always applied, written with plain torch ops."""
    h, w = x.shape[-2:]
    if mode == "pad":
        top, left = (size - h) // 2, (size - w) // 2
        return F.pad(x, (left, size - w - left, top, size - h - top))
    side = min(h, w)
    x = x[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    if side == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_transform_is_bit_exact_on_odd_sizes(channels):
    generator = torch.Generator().manual_seed(0)
    for h, w in [(7, 13), (13, 7), (31, 30), (64, 33), (100, 101), (28, 28)]:
        x = torch.randint(0, 256, (2, channels, h, w), dtype=torch.uint8, generator=generator)
        for size in (3, 8, 16, 32):
            got = ImageTransform((size, size), "resize")(x)
            assert got.dtype == torch.uint8 and torch.equal(got, reference_transform(x, size, "resize")), (h, w, size)
            if size >= max(h, w):
                assert torch.equal(ImageTransform((size, size), "pad")(x), reference_transform(x, size, "pad"))
