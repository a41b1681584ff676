"""ImageTokenizer: shapes, bad inputs, save/load round trips."""

import json

import pytest
import torch
import torch.nn.functional as F

from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig
from trainkit.files import CheckpointError


def tiny(quantizer="vq", **kw):
    cfg = dict(quantizer=quantizer, in_channels=1, image_size=8, base_channels=8, channel_mult=[1, 2],
               num_downsamples=1, latent_channels=8, codebook_size=32)
    cfg.update(kw)
    return ImageTokenizer(ImageTokenizerConfig(**cfg))


@pytest.mark.parametrize("quantizer, norm", [("vq", "group"), ("gumbel", "group"), ("vq", "none"), ("gumbel", "none")])
def test_shapes_and_output(quantizer, norm):
    torch.manual_seed(0)
    model = tiny(quantizer, norm=norm)
    images = torch.rand(4, 1, 8, 8) * 2 - 1
    out = model(images, step=0)
    assert out.reconstruction.shape == images.shape
    assert out.codes.shape == (4, 4, 4) and out.codes.dtype == torch.long
    torch.testing.assert_close(out.loss, out.recon_loss + out.quantizer_loss)
    assert "batch_perplexity" in out.stats
    model.eval()
    codes = model.encode(images)
    assert codes.shape == (4, 4, 4) and int(codes.max()) < 32
    decoded = model.decode(codes)
    assert decoded.shape == images.shape and float(decoded.abs().max()) <= 1.0
    # inference forward and encode agree on the codes
    assert torch.equal(model(images).codes, codes)


@pytest.mark.parametrize("context", ["wide", "local"])
def test_encoder_context_sets_what_a_code_sees(context):
    """A "local" encoder's latent at a grid cell depends only on its patch plus the margin."""
    from stage1_tokenizer.networks import Encoder

    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(in_channels=1, image_size=28, base_channels=8, channel_mult=[1, 2, 2],
                               num_downsamples=2, latent_channels=8, encoder_context=context)
    encoder = Encoder(cfg, 8)
    for p in encoder.parameters():  # the zero-initialised residual branches would hide the context
        torch.nn.init.normal_(p, std=0.3)
    images = torch.rand(1, 1, 28, 28)
    margin = Encoder.local_margin(cfg)
    assert margin == 3
    changed = images.clone()
    changed[..., 4 + 4 + margin:, :] = torch.rand(1, 1, 28 - 11, 28)  # rows past cell (1, *)'s reach
    changed[..., :, 4 + 4 + margin:] = torch.rand(1, 1, 28, 28 - 11)
    with torch.no_grad():
        a, b = encoder(images), encoder(changed)
    near_cells_same = torch.equal(a[..., :2, :2], b[..., :2, :2])
    assert near_cells_same == (context == "local")
    assert not torch.equal(a[..., 6, 6], b[..., 6, 6])
    # one pixel inside the margin does reach cell (1, 1)
    inside = images.clone()
    inside[..., 4 + 4 + margin - 1, 5] += 1.0
    with torch.no_grad():
        assert not torch.equal(encoder(inside)[..., 1, 1], a[..., 1, 1])


def test_encoder_context_is_validated():
    with pytest.raises(ValueError, match="encoder_context"):
        ImageTokenizerConfig(encoder_context="global")


def test_decoder_narrowing_moves_the_width_change_into_the_upsampling_conv():
    """"upsample" narrows in the conv after each upsampling, so the higher resolutions run narrower."""
    from stage1_tokenizer.networks import Decoder

    def widths_at(narrowing):
        cfg = ImageTokenizerConfig(in_channels=1, image_size=28, base_channels=8, channel_mult=[1, 2, 4],
                                   num_downsamples=2, latent_channels=8, decoder_narrowing=narrowing)
        decoder = Decoder(cfg)
        seen = []
        for m in decoder.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
                m.register_forward_hook(lambda m, i, o: seen.append((o.shape[1], o.shape[-1])))
        out = decoder(torch.randn(2, 8, 7, 7))
        assert out.shape == (2, 1, 28, 28)
        return seen

    block, upsample = widths_at("block"), widths_at("upsample")
    # widest output of a 3x3 conv at each resolution: block keeps the lower level's width after upsampling
    assert [max(w for w, s in block if s == side) for side in (7, 14, 28)] == [32, 32, 16]
    assert [max(w for w, s in upsample if s == side) for side in (7, 14, 28)] == [32, 16, 8]
    with pytest.raises(ValueError, match="decoder_narrowing"):
        ImageTokenizerConfig(decoder_narrowing="conv")


def test_rgb_and_grid():
    model = tiny(in_channels=3, image_size=16)
    assert model.grid_size == (8, 8)
    assert model.encode(torch.zeros(2, 3, 16, 16)).shape == (2, 8, 8)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(2, 3, 8, 8), r"\[B, 1, H, W\]"),
        (torch.zeros(2, 1, 7, 8), "divisible by 2"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), "float tensor"),
        (torch.zeros(1, 8, 8), r"shape \[B, 1, H, W\]"),
    ],
)
def test_bad_images(images, match):
    model = tiny()
    with pytest.raises(ValueError, match=match):
        model.encode(images)
    with pytest.raises(ValueError, match=match):
        model(images)


@pytest.mark.parametrize(
    "codes, match",
    [
        (torch.full((1, 4, 4), 32), r"\[0, 32\)"),
        (torch.full((1, 4, 4), -1), r"\[0, 32\)"),
        (torch.zeros(1, 16, dtype=torch.long), r"shape \[B, h, w\]"),
        (torch.zeros(1, 4, 4), "integer tensor"),
    ],
)
def test_bad_codes(codes, match):
    with pytest.raises(ValueError, match=match):
        tiny().decode(codes)


def test_bad_config():
    with pytest.raises(ValueError, match="channel_mult"):
        ImageTokenizerConfig(channel_mult=[1, 2], num_downsamples=2)
    with pytest.raises(ValueError, match="not divisible"):
        ImageTokenizerConfig(image_size=30, num_downsamples=2)
    with pytest.raises(ValueError, match="quantizer"):
        ImageTokenizerConfig(quantizer="fsq")


@pytest.mark.parametrize("quantizer", ["vq", "gumbel"])
def test_save_load_round_trip_gives_identical_codes(tmp_path, quantizer):
    torch.manual_seed(0)
    model = tiny(quantizer, vq_codebook_dim=4, vq_l2_normalize=True)
    model.train()(torch.rand(8, 1, 8, 8) * 2 - 1, step=3)  # move the EMA/k-means state off its init
    model.eval()
    images = torch.rand(5, 1, 8, 8) * 2 - 1
    model.save_pretrained(tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["config.json", "model.safetensors"]
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.config == model.config
    assert not loaded.training
    assert torch.equal(loaded.encode(images), model.encode(images))
    torch.testing.assert_close(loaded.decode(model.encode(images)), model.decode(model.encode(images)))


@pytest.mark.parametrize("quantizer, extra", [("vq", {}), ("vq", dict(vq_codebook_dim=4, vq_l2_normalize=True)),
                                               ("gumbel", {})])
def test_code_vectors_are_what_the_decoder_reads(quantizer, extra):
    torch.manual_seed(0)
    model = tiny(quantizer, **extra).eval()
    vectors = model.code_vectors()
    assert vectors.shape == (32, 8) and vectors.dtype == torch.float32
    codes = torch.randint(0, 32, (3, 4, 4))
    torch.testing.assert_close(model.quantizer.embed(codes), vectors[codes].permute(0, 3, 1, 2))


def test_a_loaded_tokenizer_runs_channels_last_and_saves_the_usual_layout(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = tiny().eval()
    model.save_pretrained(tmp_path / "tok")
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    convs = [m.weight for m in loaded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)
    loaded.save_pretrained(tmp_path / "again")
    saved, original = load_file(tmp_path / "again" / "model.safetensors"), model.state_dict()
    assert saved.keys() == original.keys()
    assert all(saved[k].is_contiguous() and torch.equal(saved[k], original[k]) for k in saved)


def test_truncated_weights_are_a_clear_error(tmp_path):
    tiny().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_mismatched_weights_are_a_clear_error(tmp_path):
    tiny(codebook_size=32).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["codebook_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches.*codebook"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_not_a_tokenizer_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        ImageTokenizer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageTokenizer.from_pretrained(tmp_path / "missing" / "dir")
    (tmp_path / "config.json").write_text(json.dumps({"codebook_size": 8, "colour": "red"}))
    with pytest.raises(CheckpointError, match="unknown config key"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_chroma_weight_scales_only_the_colour_part_of_the_reconstruction_error():
    from stage1_tokenizer.model import reconstruction_loss

    torch.manual_seed(0)
    images, recon = torch.rand(2, 3, 4, 4) * 2 - 1, torch.rand(2, 3, 4, 4) * 2 - 1
    assert torch.allclose(reconstruction_loss(recon, images, "mse"), F.mse_loss(recon, images))
    assert torch.allclose(reconstruction_loss(recon, images, "l1"), F.l1_loss(recon, images))
    assert torch.allclose(reconstruction_loss(recon, images, "mse", chroma_weight=1.0), F.mse_loss(recon, images))
    grey = images + 0.2                                       # the same error on every channel: luminance only
    colour = images + torch.tensor([0.2, -0.2, 0.0])[None, :, None, None]   # orthogonal to grey: chroma only
    assert torch.allclose(reconstruction_loss(grey, images, "mse", 3.0), F.mse_loss(grey, images))
    # an L1 error is measured along the colour axes once they are weighted: the grey part keeps its weight
    assert torch.allclose(reconstruction_loss(grey, images, "l1", 3.0), reconstruction_loss(grey, images, "l1", 2.0))
    assert torch.allclose(reconstruction_loss(colour, images, "mse", 3.0), 3 * F.mse_loss(colour, images))


def test_chroma_weight_needs_rgb_and_a_positive_value():
    with pytest.raises(ValueError, match="chroma_weight must be positive"):
        ImageTokenizerConfig(chroma_weight=0.0)
    with pytest.raises(ValueError, match="leave it at 1 for grayscale data"):
        ImageTokenizer(ImageTokenizerConfig(in_channels=1, chroma_weight=2.0))
    rgb = ImageTokenizer(ImageTokenizerConfig(in_channels=3, image_size=8, base_channels=8, channel_mult=[1, 2],
                                              num_downsamples=1, latent_channels=8, codebook_size=16,
                                              chroma_weight=2.0, vq_kmeans_init=False))
    out = rgb(torch.rand(2, 3, 8, 8) * 2 - 1)
    assert out.recon_loss.ndim == 0 and out.recon_loss > 0


def same_init_pair(**loss_terms):
    """Two tiny VQ tokenizers with the same initial weights, the second with `loss_terms` in its config."""
    torch.manual_seed(0)
    plain = tiny(codebook_size=16, vq_kmeans_init=False)
    torch.manual_seed(0)
    return plain, tiny(codebook_size=16, vq_kmeans_init=False, **loss_terms)


def test_spectrum_term_is_blind_to_phase_and_charges_blur():
    from stage1_tokenizer.model import reconstruction_loss, spectrum_loss

    torch.manual_seed(0)
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    assert spectrum_loss(images, images) == 0
    shifted = torch.roll(images, shifts=(1, 2), dims=(2, 3))     # the same texture, elsewhere
    assert spectrum_loss(shifted, images) < 1e-5 < F.mse_loss(shifted, images)
    assert spectrum_loss(F.avg_pool2d(images, 3, 1, 1), images) > 0.1

    plain, weighted = same_init_pair(spectrum_weight=0.5)
    out, plain_out = weighted(images), plain(images)
    torch.testing.assert_close(plain_out.reconstruction, out.reconstruction)
    expected = reconstruction_loss(out.reconstruction, images) + 0.5 * spectrum_loss(out.reconstruction, images)
    torch.testing.assert_close(out.recon_loss, expected)
    torch.testing.assert_close(out.stats["spectrum_loss"], spectrum_loss(out.reconstruction, images))
    assert "spectrum_loss" not in plain_out.stats
    with pytest.raises(ValueError, match="spectrum_weight must be >= 0"):
        ImageTokenizerConfig(spectrum_weight=-1.0)


def test_l1_term_adds_to_the_mse_loss():
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    plain, weighted = same_init_pair(l1_weight=0.25)
    out, plain_out = weighted(images), plain(images)
    torch.testing.assert_close(plain_out.reconstruction, out.reconstruction)
    l1 = (out.reconstruction - images).abs().mean()
    torch.testing.assert_close(out.recon_loss, F.mse_loss(out.reconstruction, images) + 0.25 * l1)
    torch.testing.assert_close(out.stats["l1_loss"], l1)
    assert "l1_loss" not in plain_out.stats
    with pytest.raises(ValueError, match="l1_weight must be >= 0"):
        ImageTokenizerConfig(l1_weight=-0.1)
    with pytest.raises(ValueError, match="recon_loss is already l1"):
        ImageTokenizerConfig(recon_loss="l1", l1_weight=0.1)
