"""The decoder's discretised likelihood, its scale fit and the two-stage bound in bits per dimension."""

import dataclasses
import json
import math

import pytest
import torch

from commands.evaluate import run as evaluate_main
from evalkit.bits_per_dim import bits_per_dim
from evalkit.reference import select_images
from stage1_tokenizer.likelihood import (
    discretized_logistic_log_prob, fit_log_scale, levels, reconstruction_nll,
)
from trainkit.data import DataConfig, ImageData

ALL_LEVELS = torch.arange(256).float() / 127.5 - 1


def logistic_noise(shape, scale: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return (scale * (u.log() - (-u).log1p())).float()


@pytest.mark.parametrize("scale", [1e-4, 3e-3, 0.05, 0.5, 4.0])
def test_the_256_level_probabilities_sum_to_one(scale):
    means = torch.tensor([-1.0, -1 + 1 / 255, -0.5, 0.0, 0.123, 1 - 1 / 255, 1.0, -3.0, 2.0])
    x = ALL_LEVELS.expand(len(means), 256)
    log_prob = discretized_logistic_log_prob(x, means[:, None].expand_as(x).contiguous(), math.log(scale))
    assert torch.isfinite(log_prob).all() and (log_prob <= 1e-6).all()
    assert torch.allclose(log_prob.double().exp().sum(1), torch.ones(len(means), dtype=torch.float64), atol=1e-4)


def test_log_prob_is_the_logistic_mass_of_the_level_s_bin():
    torch.manual_seed(0)
    x = ALL_LEVELS[torch.randint(1, 255, (500,))]               # inner levels
    mean = torch.rand(500) * 2 - 1
    scale = 0.1
    cdf = lambda v: torch.sigmoid((v - mean.double()) / scale)  # noqa: E731
    expected = torch.log(cdf(x.double() + 1 / 255) - cdf(x.double() - 1 / 255))
    assert torch.allclose(discretized_logistic_log_prob(x, mean, math.log(scale)).double(), expected, atol=1e-4)
    # the edge levels take the tails
    at = torch.tensor([0.2, 0.2])
    tails = torch.log(torch.stack([cdf_at(-1 + 1 / 255, 0.2, scale), 1 - cdf_at(1 - 1 / 255, 0.2, scale)]))
    edges = discretized_logistic_log_prob(torch.tensor([-1.0, 1.0]), at, math.log(scale))
    assert torch.allclose(edges.double(), tails, rtol=1e-5)


def cdf_at(v: float, mean: float, scale: float) -> torch.Tensor:
    return torch.sigmoid(torch.tensor((v - mean) / scale, dtype=torch.float64))


def test_a_far_mean_is_floored_not_minus_infinity():
    log_prob = discretized_logistic_log_prob(torch.tensor([1.0]), torch.tensor([-1.0]), math.log(1e-4))
    assert float(log_prob) == pytest.approx(math.log(1e-12))


def test_the_ml_fit_recovers_known_per_channel_scales():
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(3000, 2, 4, 4, generator=g) * 1.6 - 0.8
    true = torch.tensor([0.03, 0.15]).view(1, 2, 1, 1)
    x = levels((mean + logistic_noise(mean.shape, true, g)).clamp(-1, 1)).float() / 127.5 - 1
    fitted = fit_log_scale(x, mean).exp()
    assert fitted.shape == (2,)
    assert torch.allclose(fitted, true.flatten(), rtol=0.03)
    # the fit is the maximum: nudging the scale either way lowers the likelihood
    best = reconstruction_nll(x, mean, fitted.log()).sum()
    for factor in (0.95, 1.05):
        assert reconstruction_nll(x, mean, (fitted * factor).log()).sum() > best


def test_fit_and_likelihood_reject_bad_inputs():
    with pytest.raises(ValueError, match="one per channel"):
        discretized_logistic_log_prob(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="differ in shape"):
        discretized_logistic_log_prob(torch.zeros(2, 2), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="at least one image"):
        fit_log_scale(torch.zeros(0, 1, 2, 2), torch.zeros(0, 1, 2, 2))


# ----------------------------------------------------------------------------- the bound


def _prior(num_classes: int, codebook_size: int = 32):
    from stage2_prior import ImagePrior, PriorConfig, TokenLayout

    torch.manual_seed(0)
    return ImagePrior.from_config(PriorConfig(hidden_size=32, num_layers=1, num_heads=2),
                                  TokenLayout(codebook_size, (4, 4), num_classes)).eval()


def _components(tokenizer_dir, num_classes: int):
    """The tiny tokenizer (8x8 -> a 4x4 grid over 32 codes) and an untrained prior over its codes."""
    from stage1_tokenizer import ImageTokenizer

    return ImageTokenizer.from_pretrained(tokenizer_dir), _prior(num_classes)


@pytest.mark.parametrize("num_classes", [10, 0])
def test_bits_per_dim_is_its_two_parts_computed_by_hand(tiny_tokenizer_dir, digits_parquet, num_classes):
    tokenizer, prior = _components(tiny_tokenizer_dir, num_classes)
    data = DataConfig(dataset=str(digits_parquet), channels=1, image_size=8)
    result = bits_per_dim(prior, tokenizer, data, "test", "holdout", max_images=120, batch_size=50)

    # the scale: the ML fit on the part held out of train (5% of the 1,500 training digits)
    fit_set = ImageData(dataclasses.replace(data, val_split="holdout")).split("val")
    fit_x, _ = fit_set.get_batch(torch.arange(len(fit_set)))
    log_scale = fit_log_scale(fit_x, tokenizer.decode(tokenizer.encode(fit_x)))
    assert result["scale"] == pytest.approx(log_scale.exp().tolist(), rel=1e-6)
    assert result["scale_fit"] == {"distribution": "discretised logistic", "dataset": str(digits_parquet),
                                   "split": "holdout", "num_images": 75}

    # the bound on the same 120 test images: decoder nats + prior nats (nats per token x 16 tokens)
    images, labels = select_images(data, "test", 120, seed=0)
    x = images.float() / 127.5 - 1
    codes = tokenizer.encode(x)
    recon_nats = reconstruction_nll(x, tokenizer.decode(codes), log_scale)
    with torch.no_grad():
        prior_nats = prior.image_nll(codes, labels if num_classes else None) * 16
    dims = 64 * math.log(2)
    assert result["parts"]["reconstruction"] == pytest.approx(float(recon_nats.mean()) / dims, rel=1e-5)
    assert result["parts"]["prior"] == pytest.approx(float(prior_nats.mean()) / dims, rel=1e-5)
    assert result["value"] == pytest.approx(float((recon_nats + prior_nats).mean()) / dims, rel=1e-5)
    assert result["value"] > 0 and result["parts"]["prior"] > 0 and result["parts"]["reconstruction"] > 0
    assert result["unit"] == "bits per dim" and result["num_samples"] == 120
    assert result["reference"] == {"dataset": str(digits_parquet), "split": "test", "num_images": 120}


def test_bits_per_dim_rejects_the_test_split_for_the_fit_and_unknown_splits(tiny_tokenizer_dir, digits_parquet):
    tokenizer, prior = _components(tiny_tokenizer_dir, 10)
    data = DataConfig(dataset=str(digits_parquet), channels=1, image_size=8)
    for fit_split in ("test", "testing", "val"):           # "val" is the test split here (data.val_split=auto)
        with pytest.raises(ValueError, match="other images than the ones scored"):
            bits_per_dim(prior, tokenizer, data, "test", fit_split)
    # with the fit on the holdout, "train" is scored without it
    train = bits_per_dim(prior, tokenizer, data, "train", "holdout", batch_size=500)
    assert train["reference"]["num_images"] == 1425 and train["scale_fit"]["num_images"] == 75
    with pytest.raises(ValueError, match="split 'nope' not found"):
        bits_per_dim(prior, tokenizer, data, "test", "nope")
    with pytest.raises(ValueError, match="the tokenizer and the prior do not fit"):
        bits_per_dim(_prior(10, codebook_size=64), tokenizer, data)


def test_pipeline_command_reports_bits_per_dim(tiny_tokenizer_dir, digits_parquet, tmp_path, capsys):
    from pipelines import Pipeline

    tokenizer, prior = _components(tiny_tokenizer_dir, 10)
    saved = Pipeline(tokenizer, prior).save_pretrained(tmp_path / "pipe", samples=False)
    out = tmp_path / "report.json"
    report = evaluate_main(["pipeline", str(saved), "--dataset", str(digits_parquet), "--metrics", "bpd",
                            "--nll-samples", "80", "--bpd-fit-samples", "60", "--output", str(out)])
    figure = json.loads(out.read_text())["metrics"]["bpd"]
    assert figure == report["metrics"]["bpd"] and set(report["metrics"]) == {"bpd"}
    data = DataConfig(dataset=str(digits_parquet), channels=1, image_size=8)
    direct = bits_per_dim(prior, tokenizer, data, "test", "holdout", max_images=80, max_fit_images=60)
    assert figure["value"] == pytest.approx(direct["value"], rel=1e-6)
    assert figure["scale_fit"]["num_images"] == 60 and figure["reference"]["num_images"] == 80
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("bpd"))
    assert f"{figure['value']:.4f}" in row and "reconstruction" in row and "prior" in row
    with pytest.raises(SystemExit):
        evaluate_main(["pipeline", str(saved), "--dataset", str(digits_parquet), "--metrics", "bpd",
                       "--bpd-fit-split", "test"])
    assert "other images than the ones scored" in capsys.readouterr().err
