"""Adversarial tokenizer training: the losses against hand-computed values, the adaptive and
ramped weight of the generator term, the discriminator as a second trained part of a
command-line run (idle before its start step, resumed exactly), and clear errors."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from conftest import REPO, TINY_TOKENIZER, run_module
from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig
from stage1_tokenizer.adversarial import (
    AdversarialConfig, LeCamEMA, PatchDiscriminator, adaptive_weight, discriminator_loss, generator_loss,
    lecam_penalty, ramp,
)
from stage1_tokenizer.networks import Decoder
from stage1_tokenizer.train import TokenizerTask, TokenizerTrainConfig
from trainkit.config import load_config
from trainkit.trainer import compile_for_training

RECIPE = "configs/tokenizer/fashion_mnist_vq.yaml"
TINY_ADVERSARY = ["adversarial.weight=0.5", "adversarial.start_step=5", "adversarial.ramp_steps=5",
                  "adversarial.channels=8", "adversarial.num_layers=2", "adversarial.lecam_weight=0.1"]

REAL = torch.tensor([2.0, 0.5, -1.0])
FAKE = torch.tensor([-2.0, 0.0, 0.5])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_discriminator_losses_match_hand_computed_values():
    # hinge: relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 1.5]
    assert discriminator_loss(REAL, FAKE, "hinge").item() == pytest.approx(0.5 * (2.5 / 3 + 2.5 / 3))
    real_terms = sum(softplus(-r) for r in REAL.tolist()) / 3
    fake_terms = sum(softplus(f) for f in FAKE.tolist()) / 3
    assert discriminator_loss(REAL, FAKE, "non_saturating").item() == pytest.approx(0.5 * (real_terms + fake_terms))


def test_generator_losses_match_hand_computed_values():
    assert generator_loss(FAKE, "hinge").item() == pytest.approx(0.5)   # -mean(fake)
    expected = sum(softplus(-f) for f in FAKE.tolist()) / 3
    assert generator_loss(FAKE, "non_saturating").item() == pytest.approx(expected)


def test_losses_are_float32_under_low_precision_logits():
    for kind in ("hinge", "non_saturating"):
        assert discriminator_loss(REAL.bfloat16(), FAKE.bfloat16(), kind).dtype == torch.float32
        assert generator_loss(FAKE.bfloat16(), kind).dtype == torch.float32


def test_lecam_penalty_matches_hand_computed_value():
    # relu(real - ema_fake) = [2.5, 1, 0] -> mean of squares 7.25 / 3; relu(ema_real - fake) = [2.5, .5, 0] -> 6.5 / 3
    value = lecam_penalty(REAL, FAKE, torch.tensor(0.5), torch.tensor(-0.5))
    assert value.item() == pytest.approx((7.25 + 6.5) / 3)


def test_lecam_means_live_in_buffers():
    ema = LeCamEMA(decay=0.9)
    real, fake = ema.update(torch.tensor([1.0, 1.0]), torch.tensor([-3.0, -1.0]))
    assert real.item() == pytest.approx(0.1) and fake.item() == pytest.approx(-0.2)
    real, fake = ema.update(torch.tensor([1.0]), torch.tensor([-2.0]))
    assert real.item() == pytest.approx(0.19) and fake.item() == pytest.approx(-0.38)
    state = ema.state_dict()
    assert set(state) == {"real", "fake"} and state["real"].item() == pytest.approx(0.19)
    real.add_(100)   # the returned values are copies
    assert ema.real.item() == pytest.approx(0.19)


@pytest.mark.parametrize("shape, logits", [((3, 1, 28, 28), (3, 1, 3, 3)), ((3, 3, 32, 32), (3, 1, 4, 4))])
def test_patch_discriminator_scores_patches_of_each_image_on_its_own(shape, logits):
    torch.manual_seed(0)
    disc = PatchDiscriminator(shape[1], channels=16, num_layers=3, norm="group")
    a, b = torch.randn(shape), torch.randn(shape)
    together = disc(torch.cat([a, b]))
    assert together.shape == (2 * shape[0], *logits[1:])
    torch.testing.assert_close(together[: shape[0]], disc(a))   # no statistics shared across the batch
    with pytest.raises(ValueError, match=r"adversarial.num_layers <= 3"):
        PatchDiscriminator(1, num_layers=4).check_image_size(8)


def tiny_decoder() -> Decoder:
    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=[1, 2],
                               num_downsamples=1, latent_channels=4)
    return Decoder(cfg)


def test_adaptive_weight_is_the_gradient_norm_ratio_at_the_last_layer():
    decoder, disc = tiny_decoder(), PatchDiscriminator(1, channels=8, num_layers=2)
    z, target = torch.randn(4, 4, 4, 4), torch.rand(4, 1, 8, 8) * 2 - 1
    last = decoder.net[-1].weight

    def losses():
        recon = decoder(z)
        return torch.nn.functional.mse_loss(recon, target), -disc(recon).mean()

    by_hand = []
    for pick in (0, 1):   # each loss's gradient, from a fresh graph, through .backward()
        decoder.zero_grad()
        losses()[pick].backward()
        by_hand.append(last.grad.norm().item())
    expected = by_hand[0] / (by_hand[1] + 1e-4)

    recon_loss, gen_loss = losses()
    weight = adaptive_weight(recon_loss, gen_loss, last, max_weight=1e4)
    assert weight.item() == pytest.approx(expected, rel=1e-5)
    assert not weight.requires_grad
    (recon_loss + weight * gen_loss).backward()   # both graphs were kept for the backward pass
    assert adaptive_weight(*losses(), last, max_weight=expected / 2).item() == pytest.approx(expected / 2)


def test_ramp_is_zero_before_the_start_then_linear_then_one():
    cfg = AdversarialConfig(weight=0.5, start_step=10, ramp_steps=4)
    assert [ramp(s, cfg) for s in (0, 9, 10, 11, 12, 14, 100)] == [0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    at_once = AdversarialConfig(weight=0.5, start_step=10, ramp_steps=0)
    assert [ramp(s, at_once) for s in (9, 10)] == [0.0, 1.0]


def build_task(data: Path, *overrides: str) -> TokenizerTask:
    cfg = load_config(TokenizerTrainConfig, REPO / RECIPE, [f"data.dataset={data}", *TINY_TOKENIZER, *overrides])
    set_seed(cfg.train.seed)   # as the command does before building the task
    return TokenizerTask(cfg)


def test_off_at_weight_zero(digits_parquet):
    task = build_task(digits_parquet, "adversarial.weight=0")
    assert task.extra_parts() == [] and task.discriminator is None
    images, labels = next(iter(DataLoader(task.train_dataset, batch_size=8)))
    loss, logs = task.training_step(task.model, (images, labels), 0)
    assert isinstance(loss, torch.Tensor) and "d_real" not in logs


@pytest.mark.parametrize("adaptive", [True, False])
def test_the_generator_term_is_off_before_the_start_then_ramps_to_weight_times_adaptive(digits_parquet, adaptive):
    task = build_task(digits_parquet, "adversarial.weight=0.5", "adversarial.start_step=2", "adversarial.ramp_steps=2",
                      "adversarial.channels=8", "adversarial.num_layers=2", f"adversarial.adaptive_weight={adaptive}")
    (part,) = task.extra_parts()
    assert part.name == "discriminator" and part.start_step == 2 and part.betas == [0.5, 0.9]
    batch = next(iter(DataLoader(task.train_dataset, batch_size=8)))
    for step, factor in [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.5), (4, 1.0), (9, 1.0)]:
        losses, logs = task.training_step(task.model, batch, step, discriminator=task.discriminator)
        plain = logs["recon_loss"] + logs["quantizer_loss"]
        if step < 2:   # the trainer does not step the discriminator yet, so it is not run
            assert isinstance(losses, torch.Tensor) and losses.item() == plain.item()
            assert logs["gen_weight"].item() == 0.0 and "d_real" not in logs
            continue
        assert losses["discriminator"].requires_grad
        if factor == 0:
            assert logs["gen_weight"].item() == 0.0 and "adaptive_weight" not in logs
            assert losses["model"].item() == plain.item()
            continue
        scale = logs["adaptive_weight"].item() if adaptive else 1.0
        assert logs["gen_weight"].item() == pytest.approx(0.5 * factor * scale, rel=1e-6)
        term = losses["model"].item() - plain.item()
        assert term == pytest.approx(logs["gen_weight"].item() * logs["gen_loss"].item(), rel=1e-3, abs=1e-6)


def test_a_compiled_step_compiles_once_through_restarts_and_the_adaptive_weight(digits_parquet):
    """Under `train.compile` the codebook's bookkeeping (k-means init, EMA, dead-code restarts) runs
    eagerly, so its changing counters do not recompile the step, and the adaptive weight may take
    gradients of the compiled graph more than once."""
    task = build_task(digits_parquet, *TINY_ADVERSARY, "model.vq_restart_threshold=5")   # so that codes restart
    compiled = compile_for_training(task.model)
    batch = next(iter(DataLoader(task.train_dataset, batch_size=32)))
    restarted = []

    def step(i: int) -> None:
        losses, logs = task.training_step(compiled, batch, i, discriminator=task.discriminator)
        (losses if isinstance(losses, torch.Tensor) else losses["model"]).backward()
        restarted.append(float(logs["restarted"]))

    for i in range(2):   # step 0 runs the k-means init; at step 1 the step number turns into a symbol
        step(i)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(2, 12):   # the discriminator starts at 5; the codebook restarts at its 10th step
            step(i)
    assert restarted[9] > 0 and sum(restarted) == restarted[9]
    assert task.model.quantizer.steps.item() == 12 and task.model.decoder.net[-1].weight.grad is not None


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "stage1_tokenizer.train", "--config", RECIPE, f"data.dataset={data}", f"output_dir={out}",
            *TINY_TOKENIZER, *TINY_ADVERSARY, "train.max_steps=20", "train.checkpoint_every=5",
            "train.keep_checkpoints=5", *extra]


@pytest.fixture(scope="module")
def adversarial_run(digits_parquet, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("adversarial") / "run"
    run_module(train_args(digits_parquet, out))
    return out


def discriminator_at(out: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoints" / f"step-{step:07d}" / "model_1.safetensors"))


def test_a_run_trains_the_discriminator_from_its_start_step_and_logs_it(adversarial_run, digits_parquet):
    rows = [json.loads(line) for line in (adversarial_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    for key in ("train/discriminator_loss", "train/gen_loss", "train/d_real", "train/d_fake", "train/lecam_penalty"):
        assert key not in train[0], key   # steps 0-4, before the start: the discriminator is not run
        assert all(math.isfinite(r[key]) for r in train[1:]), key
    assert train[0]["train/gen_weight"] == 0.0 and "train/adaptive_weight" not in train[0]
    assert train[-1]["train/gen_weight"] > 0 and train[-1]["train/adaptive_weight"] > 0

    initial = build_task(digits_parquet, *TINY_ADVERSARY).discriminator.state_dict()
    before, after = discriminator_at(adversarial_run, 5), discriminator_at(adversarial_run, 10)
    assert before.keys() == initial.keys()
    for name, value in initial.items():   # steps 0-4 ran before the start step
        torch.testing.assert_close(before[name], value, atol=0, rtol=0, msg=name)
    assert not torch.equal(after["patch.net.0.weight"], initial["patch.net.0.weight"])
    assert after["lecam.real"].item() != 0.0 and after["lecam.fake"].item() != 0.0

    final = load_file(str(adversarial_run / "final" / "model.safetensors"))
    assert not any(name.startswith(("patch.", "lecam.")) for name in final)   # the tokenizer only
    ImageTokenizer.from_pretrained(adversarial_run / "final")


def test_resuming_after_the_start_step_matches_the_uninterrupted_run(adversarial_run, digits_parquet, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(adversarial_run / "checkpoints" / "step-0000010", out / "checkpoints" / "step-0000010")
    (out / "checkpoints" / "latest").write_text("step-0000010\n")
    result = run_module(train_args(digits_parquet, out, "resume=latest"))
    assert "at step 10" in result.stdout + result.stderr
    for name, expected in [("final/model.safetensors", adversarial_run / "final" / "model.safetensors"),
                           ("checkpoints/step-0000020/model_1.safetensors", discriminator_at(adversarial_run, 20))]:
        got = load_file(str(out / name))
        expected = load_file(str(expected)) if isinstance(expected, Path) else expected
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0, msg=f"{name}: {key}")


@pytest.mark.parametrize("field, value, message", [
    ("weight", -1.0, "adversarial.weight must be >= 0"),
    ("start_step", -5, "adversarial.start_step must be >= 0"),
    ("ramp_steps", -1, "adversarial.ramp_steps must be >= 0"),
    ("loss", "wasserstein", "adversarial.loss must be 'hinge' or 'non_saturating'"),
    ("lecam_decay", 1.0, r"adversarial.lecam_decay must be in \(0, 1\)"),
    ("betas", [0.5], "adversarial.betas must be two numbers"),
    ("lr", 0.0, "adversarial.lr must be > 0"),
    ("num_layers", 0, "adversarial.num_layers must be >= 1"),
    ("max_adaptive_weight", 0.0, "adversarial.max_adaptive_weight must be > 0"),
])
def test_bad_settings_are_clear_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        AdversarialConfig(**{field: value})


def test_a_discriminator_that_would_never_train_is_a_clear_error():
    from stage1_tokenizer.train import TokenizerTrainConfig
    from trainkit.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="adversarial.start_step=100 is not before train.max_steps=100"):
        load_config(TokenizerTrainConfig, None, ["adversarial.weight=0.5", "adversarial.start_step=100",
                                                 "train.max_steps=100"])
    off = load_config(TokenizerTrainConfig, None, ["adversarial.start_step=100", "train.max_steps=100"])
    assert not off.adversarial.enabled          # without a discriminator the start step does not matter


def test_bad_settings_on_the_command_line(digits_parquet, tmp_path):
    result = run_module(train_args(digits_parquet, tmp_path / "x", "adversarial.loss=wasserstein"), check=False)
    assert result.returncode != 0 and "adversarial.loss" in result.stderr and "Traceback" not in result.stderr
    result = run_module(train_args(digits_parquet, tmp_path / "x", "adversarial.num_layers=4"), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "adversarial.num_layers=4 halves 8x8 images to nothing" in result.stderr
