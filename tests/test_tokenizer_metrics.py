"""Reconstruction metrics of a tokenizer: MSE/PSNR, and the colour errors of RGB images."""

import contextlib

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from stage1_tokenizer.evaluate import color_errors, reconstruction_metrics

CB = torch.tensor([-0.168736, -0.331264, 0.5])  # BT.601, on [0, 1]
CR = torch.tensor([0.5, -0.418688, -0.081312])
LUMA = torch.tensor([0.299, 0.587, 0.114])


class ChangeTokenizer(torch.nn.Module):
    """A "tokenizer" whose reconstruction is `change(image on [0, 1])`; one code per pixel value."""

    codebook_size = 256

    def __init__(self, change=lambda x: x):
        super().__init__()
        self.change = change

    def encode(self, images):
        return ((images + 1) * 127.5).round().long()

    def decode(self, codes):
        return self.change(codes.float() / 255) * 2 - 1


def loader(channels: int = 3, n: int = 10, batch_size: int = 4) -> DataLoader:
    """Images whose pixel values lie in [0.2, 0.8] on [0, 1] (whole steps of 1/255), with labels."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(51, 205, (n, channels, 6, 6), generator=generator)
    return DataLoader(TensorDataset(pixels / 127.5 - 1, torch.zeros(n, dtype=torch.long)), batch_size=batch_size)


def metrics_of(change, **kw) -> dict[str, float]:
    return reconstruction_metrics(ChangeTokenizer(change), loader(**kw))[0]


def channels_shift(r: float, g: float, b: float):
    return lambda x: x + torch.tensor([r, g, b]).view(1, 3, 1, 1)


def test_identical_images_have_no_colour_error():
    figures = metrics_of(lambda x: x)
    for key in ("chroma_error", "mean_color_error", "mse"):
        assert figures[key] == pytest.approx(0, abs=1e-7), key
    assert figures["num_images"] == 10


def test_a_known_colour_shift_gives_the_values_worked_out_by_hand():
    # +0.1 red: Cb moves by -0.168736 * 0.1, Cr by 0.5 * 0.1; the mean colour moves 0.1
    figures = metrics_of(channels_shift(0.1, 0, 0))
    assert figures["chroma_error"] == pytest.approx((0.0168736 + 0.05) / 2, rel=1e-5)
    assert figures["mean_color_error"] == pytest.approx(0.1, rel=1e-5)
    assert figures["mse"] == pytest.approx(0.01 / 3, rel=1e-5)
    shift = torch.tensor([0.1, -0.05, 0.02])
    figures = metrics_of(channels_shift(*shift.tolist()))
    expected = (abs(float(CB @ shift)) + abs(float(CR @ shift))) / 2
    assert figures["chroma_error"] == pytest.approx(expected, rel=1e-5)
    assert figures["mean_color_error"] == pytest.approx(float(shift.norm()), rel=1e-5)


def test_grey_with_the_right_luminance_loses_chroma_but_a_luminance_change_keeps_it():
    grey = metrics_of(lambda x: torch.einsum("c,bchw->bhw", LUMA, x)[:, None].expand(-1, 3, -1, -1))
    images = (loader().dataset.tensors[0] + 1) / 2
    chroma_of_originals = torch.stack([torch.einsum("c,bchw->bhw", w, images).abs() for w in (CB, CR)])
    assert grey["chroma_error"] == pytest.approx(float(chroma_of_originals.mean()), rel=1e-4)
    assert grey["chroma_error"] > 0.02
    brighter = metrics_of(channels_shift(0.07, 0.07, 0.07))
    assert brighter["chroma_error"] == pytest.approx(0, abs=1e-6)
    assert brighter["mse"] == pytest.approx(0.07 ** 2, rel=1e-4)
    assert brighter["mean_color_error"] == pytest.approx(0.07 * 3 ** 0.5, rel=1e-4)


def test_grayscale_images_have_no_colour_figures():
    figures = metrics_of(lambda x: x + 0.1, channels=1)
    assert "chroma_error" not in figures and "mean_color_error" not in figures
    assert figures["mse"] == pytest.approx(0.01, rel=1e-4)


def test_colour_errors_are_per_image():
    images = torch.zeros(2, 3, 4, 4)
    recon = images.clone()
    recon[1, 2] += 0.4  # image 1: blue up by 0.2 on [0, 1]
    chroma, mean_color = color_errors(images, recon)
    assert chroma.tolist() == pytest.approx([0, (0.5 + 0.081312) * 0.2 / 2], abs=1e-6)
    assert mean_color.tolist() == pytest.approx([0, 0.2], abs=1e-6)


class DuplicatingAccelerator:
    """Stands in for two processes holding the same shard: gathering repeats every tensor twice."""

    def __init__(self):
        self.gathered: list[int] = []

    def autocast(self):
        return contextlib.nullcontext()

    def gather_for_metrics(self, data):
        def twice(x):
            if isinstance(x, torch.Tensor):
                self.gathered.append(len(x))
                return torch.cat([x, x])
            return type(x)(twice(v) for v in x)
        return twice(data)


def test_colour_errors_are_gathered_with_the_mse():
    accelerator = DuplicatingAccelerator()
    change = channels_shift(0.1, 0, 0)
    gathered, _ = reconstruction_metrics(ChangeTokenizer(change), loader(), accelerator)
    alone = metrics_of(change)
    assert gathered["num_images"] == 2 * alone["num_images"] == 20
    for key in ("mse", "psnr", "chroma_error", "mean_color_error"):
        assert gathered[key] == pytest.approx(alone[key], rel=1e-6), key
    assert len(accelerator.gathered) == 3 * 5  # 3 batches: mse, psnr, two colour errors, codes
