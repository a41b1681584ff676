"""`Pipeline` in-process: fit checks, generation, output types, encode/decode, completion, save/load.

Small random components stand in for trained ones here (nothing below depends on training);
`test_pipeline_cli.py` covers a freshly trained pipeline, the commands and the hub.
"""

import json

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from pipelines import Pipeline, write_model_card
from pipelines.pipeline import DECODE_CHUNK
from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig
from stage2_prior import ImagePrior, PriorConfig, SamplingOptions, TokenLayout
from trainkit.files import CheckpointError

NAMES = ("cat", "dog", "owl")


def make_tokenizer(channels: int = 1, codebook_size: int = 32, num_downsamples: int = 1) -> ImageTokenizer:
    """8x8 images -> a 4x4 grid (one downsampling) of `codebook_size` codes."""
    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(in_channels=channels, image_size=8, base_channels=8,
                               channel_mult=[1, 2, 2][:num_downsamples + 1], num_downsamples=num_downsamples,
                               latent_channels=8, codebook_size=codebook_size, vq_kmeans_init=False)
    return ImageTokenizer(cfg).eval()


def make_prior(codebook_size: int = 32, grid=(4, 4), num_classes: int = 3, names=NAMES) -> ImagePrior:
    torch.manual_seed(1)
    layout = TokenLayout(codebook_size, grid, num_classes, names if num_classes else None)
    prior = ImagePrior.from_config(PriorConfig(hidden_size=32, num_layers=2, num_heads=2), layout)
    with torch.no_grad():
        prior.lm.get_output_embeddings().weight.mul_(10.0)   # far from uniform, so guidance matters
    return prior.eval()


@pytest.fixture(scope="module")
def pipe() -> Pipeline:
    return Pipeline(tokenizer=make_tokenizer(), prior=make_prior())


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    return pipe.save_pretrained(tmp_path_factory.mktemp("saved") / "pipe")


def gen(p: Pipeline, **kw):
    return p.generate(progress=False, **{"output_type": "pt", **kw})


# ------------------------------------------------------------------------------------------ fit


def test_components_must_fit():
    with pytest.raises(ValueError) as info:
        Pipeline(tokenizer=make_tokenizer(), prior=make_prior(codebook_size=64))
    assert "the tokenizer has 32 codes and a 4x4 grid but the prior expects 64 codes on a 4x4 grid" in str(info.value)
    with pytest.raises(ValueError, match="the tokenizer has 32 codes and a 2x2 grid but the prior expects 32 codes "
                                         "on a 4x4 grid"):
        Pipeline(tokenizer=make_tokenizer(num_downsamples=2), prior=make_prior())
    with pytest.raises(TypeError, match="prior must be an ImagePrior"):
        Pipeline(tokenizer=make_tokenizer(), prior=make_prior().lm)
    with pytest.raises(ValueError, match="unconditional prior takes no guidance"):
        Pipeline(tokenizer=make_tokenizer(), prior=make_prior(num_classes=0), default_guidance_scale=2.0)


def test_properties(pipe):
    assert pipe.image_size == (8, 8) and pipe.channels == 1 and pipe.grid == (4, 4) and pipe.codebook_size == 32
    assert pipe.conditional and pipe.num_classes == 3 and pipe.class_names == list(NAMES)
    assert pipe.default_guidance_scale == 2.0
    assert Pipeline(make_tokenizer(), make_prior(num_classes=0)).default_guidance_scale == 1.0
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert "4x4 grids of 32 codes" in repr(pipe)


# ------------------------------------------------------------------------------------------ generation


def test_output_types(pipe):
    kw = dict(num_images=5, class_labels=[0, 1, 2, 0, 1], seed=3)
    pt = gen(pipe, **kw)
    assert pt.dtype == torch.float32 and pt.shape == (5, 1, 8, 8) and pt.device.type == "cpu"
    assert 0 <= float(pt.min()) and float(pt.max()) <= 1 and float(pt.std()) > 0
    arr = gen(pipe, output_type="np", **kw)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (5, 8, 8, 1)
    np.testing.assert_array_equal(arr, pt.permute(0, 2, 3, 1).numpy())
    pil = gen(pipe, output_type="pil", **kw)
    assert isinstance(pil, list) and len(pil) == 5 and all(im.mode == "L" and im.size == (8, 8) for im in pil)
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in pil]),
                                  (arr[..., 0] * 255).round().astype(np.uint8))
    codes = gen(pipe, output_type="codes", **kw)
    assert codes.dtype == torch.long and codes.shape == (5, 4, 4)
    assert torch.equal(pipe.decode(codes, output_type="pt"), pt)


def test_rgb_pipeline_gives_rgb_images():
    pipe = Pipeline(make_tokenizer(channels=3), make_prior(num_classes=0))
    pil = pipe.generate(num_images=2, seed=0, progress=False)
    assert [im.mode for im in pil] == ["RGB", "RGB"] and pil[0].size == (8, 8)
    assert pipe.generate(num_images=2, seed=0, output_type="np", progress=False).shape == (2, 8, 8, 3)


def test_same_seed_same_images_whatever_the_batch_size(pipe):
    n = DECODE_CHUNK + 5                                          # more than one decoding chunk
    kw = dict(num_images=n, class_labels=[i % 3 for i in range(n)], seed=11, guidance_scale=1.5, top_k=20)
    ref = gen(pipe, **kw)
    for batch_size in (1, 4, 7):
        assert torch.equal(ref, gen(pipe, batch_size=batch_size, **kw))
    assert not torch.equal(ref, gen(pipe, **{**kw, "seed": 12}))
    codes = gen(pipe, output_type="codes", **kw)
    for start, stop in [(0, 3), (2, 9), (5, n)]:                  # decoding does not depend on the company
        assert torch.equal(pipe.decode(codes[start:stop], output_type="pt"), ref[start:stop])


def test_class_names_and_ids(pipe):
    by_name = gen(pipe, class_labels=["dog", "owl", "cat"], seed=5)
    assert by_name.shape[0] == 3                                  # num_images follows the labels
    assert torch.equal(by_name, gen(pipe, class_labels=[1, 2, 0], seed=5))
    assert torch.equal(by_name, gen(pipe, class_labels=torch.tensor([1, 2, 0]), seed=5))
    one = gen(pipe, num_images=4, class_labels="owl", seed=5)
    assert torch.equal(one, gen(pipe, num_images=4, class_labels=2, seed=5))
    assert not torch.equal(one, gen(pipe, num_images=4, class_labels=0, seed=5))
    assert gen(pipe, seed=5).shape == (1, 1, 8, 8)               # no labels: one image from the null class


def test_default_guidance(pipe):
    kw = dict(class_labels=[0, 1, 2, 0], seed=2)
    assert torch.equal(gen(pipe, **kw), gen(pipe, guidance_scale=2.0, **kw))
    assert not torch.equal(gen(pipe, **kw), gen(pipe, guidance_scale=1.0, **kw))
    plain = Pipeline(pipe.tokenizer, pipe.prior, default_guidance_scale=1.0)
    assert torch.equal(gen(plain, **kw), gen(pipe, guidance_scale=1.0, **kw))
    assert torch.equal(gen(pipe, num_images=2, seed=2), gen(pipe, num_images=2, seed=2, guidance_scale=1.0))


def test_stored_sampling_defaults_apply_and_overrides_win(tmp_path):
    prior = make_prior()
    prior.sampling_defaults = SamplingOptions(temperature=0.6, top_k=12)
    tuned = Pipeline(make_tokenizer(), prior)
    plain = Pipeline(make_tokenizer(), make_prior())
    assert tuned.sampling_defaults == SamplingOptions(guidance_scale=2.0, temperature=0.6, top_k=12)
    constant = dict(guidance_schedule="constant", autoguidance_scale=0.0)
    assert tuned.sampling_options([0], seed=1) == SamplingOptions(2.0, 0.6, 12, 1.0, seed=1, **constant)
    assert tuned.sampling_options(None, SamplingOptions(top_k=0)) == SamplingOptions(1.0, 0.6, 0, 1.0, **constant)
    kw = dict(class_labels=[0, 1, 2, 0, 1, 2], seed=4, output_type="codes")
    ref = gen(tuned, **kw)
    assert torch.equal(ref, gen(plain, temperature=0.6, top_k=12, **kw))
    assert not torch.equal(ref, gen(tuned, temperature=1.0, **kw))
    assert torch.equal(gen(tuned, temperature=1.0, top_k=0, **kw), gen(plain, **kw))
    # one options object does what the keywords do; keywords win over it
    assert torch.equal(gen(tuned, temperature=1.0, top_k=0, guidance_scale=1.5, **kw),
                       gen(tuned, options=SamplingOptions(temperature=1.0, top_k=0, guidance_scale=1.5, seed=4),
                           **{**kw, "seed": None}))
    assert torch.equal(ref, gen(tuned, options=SamplingOptions(temperature=1.0, seed=9), temperature=0.6, **kw))
    # the defaults travel with the saved pipeline, in its prior's generation config
    saved = tuned.save_pretrained(tmp_path / "p", samples=False)
    config = json.loads((saved / "prior" / "generation_config.json").read_text())
    assert (config["temperature"], config["top_k"], config["class_guidance_scale"]) == (0.6, 12, 2.0)
    loaded = Pipeline.from_pretrained(saved)
    assert loaded.sampling_defaults == tuned.sampling_defaults
    assert torch.equal(gen(loaded, **kw), ref)
    assert torch.equal(gen(loaded, **kw), gen(loaded, temperature=0.6, **kw))
    assert "temperature 0.6, top-k 12." in loaded.grid_caption(8, seed=0)


def test_a_linear_guidance_schedule_travels_with_the_pipeline(tmp_path):
    from commands.pipeline_cli import generate_main

    prior = make_prior()
    prior.sampling_defaults = SamplingOptions(guidance_scale=4.0, guidance_schedule="linear")
    ramp = Pipeline(make_tokenizer(), prior)
    kw = dict(class_labels=[0, 1, 2, 0, 1, 2], seed=4, output_type="codes")
    ref = gen(ramp, **kw)
    assert not torch.equal(ref, gen(ramp, guidance_schedule="constant", **kw))
    assert torch.equal(gen(ramp, guidance_schedule="constant", **kw), gen(Pipeline(make_tokenizer(), make_prior(),
                                                                                   default_guidance_scale=4.0), **kw))
    assert "guidance scale 4 (rising linearly from 1)" in ramp.grid_caption(8, seed=0)
    saved = ramp.save_pretrained(tmp_path / "p", samples=False)
    assert json.loads((saved / "pipeline.json").read_text())["default_guidance_schedule"] == "linear"
    assert "rising linearly from 1" in (saved / "README.md").read_text()
    loaded = Pipeline.from_pretrained(saved)
    assert loaded.sampling_defaults.guidance_schedule == "linear" and torch.equal(gen(loaded, **kw), ref)
    files = generate_main([str(saved), "--class-labels", "0", "1", "--seed", "3", "--output-dir", str(tmp_path / "o"),
                           "--no-progress", "--guidance-schedule", "constant"])
    told = np.stack([np.asarray(PIL.Image.open(f)) for f in files])
    images = loaded.generate(class_labels=[0, 1], seed=3, progress=False, guidance_schedule="constant")
    assert np.array_equal(told, np.stack([np.asarray(im) for im in images]))


def test_a_guide_and_its_autoguidance_travel_with_the_pipeline(tmp_path):
    from commands.pipeline_cli import generate_main

    guide = make_prior()
    with torch.no_grad():
        guide.lm.get_output_embeddings().weight.mul_(0.3)
    prior = ImagePrior(make_prior().lm, guide.layout, guide)
    prior.sampling_defaults = SamplingOptions(guidance_scale=2.0, autoguidance_scale=1.0)
    auto = Pipeline(make_tokenizer(), prior)
    kw = dict(class_labels=[0, 1, 2, 0, 1, 2], seed=4, output_type="codes")
    ref = gen(auto, **kw)
    assert not torch.equal(ref, gen(auto, autoguidance_scale=0.0, **kw))
    assert torch.equal(gen(auto, autoguidance_scale=0.0, **kw), gen(Pipeline(make_tokenizer(), make_prior()), **kw))
    saved = auto.save_pretrained(tmp_path / "p", samples=False)
    assert json.loads((saved / "pipeline.json").read_text())["components"]["prior"]["guide"] is True
    assert "guidance scale 2, autoguidance 1, temperature 1." in auto.grid_caption(8, seed=0)
    assert (saved / "prior" / "guide" / "model.safetensors").is_file()
    loaded = Pipeline.from_pretrained(saved)
    assert loaded.sampling_defaults.autoguidance_scale == 1.0 and torch.equal(gen(loaded, **kw), ref)
    files = generate_main([str(saved), "--class-labels", "0", "1", "--seed", "3", "--output-dir", str(tmp_path / "o"),
                           "--no-progress", "--autoguidance-scale", "0"])
    told = np.stack([np.asarray(PIL.Image.open(f)) for f in files])
    images = loaded.generate(class_labels=[0, 1], seed=3, progress=False, autoguidance_scale=0.0)
    assert np.array_equal(told, np.stack([np.asarray(im) for im in images]))
    with pytest.raises(ValueError, match="needs a prior saved with a guide"):
        gen(Pipeline(make_tokenizer(), make_prior()), autoguidance_scale=1.0, **kw)


def test_assigned_sampling_defaults_follow_the_guidance_rule():
    pipe = Pipeline(make_tokenizer(), make_prior())
    pipe.sampling_defaults = SamplingOptions(temperature=0.8)          # no guidance given: the conditional default
    assert pipe.sampling_defaults == SamplingOptions(guidance_scale=2.0, temperature=0.8)
    plain = Pipeline(make_tokenizer(), make_prior(num_classes=0))
    plain.sampling_defaults = SamplingOptions(top_k=4)
    assert plain.default_guidance_scale == 1.0
    with pytest.raises(ValueError, match="unconditional prior takes no guidance"):
        plain.sampling_defaults = SamplingOptions(guidance_scale=1.5)
    assert plain.sampling_defaults == SamplingOptions(guidance_scale=1.0, top_k=4)     # unchanged by the bad one


def test_generate_command_uses_the_stored_defaults_unless_told(tmp_path):
    from commands.pipeline_cli import generate_main

    prior = make_prior()
    prior.sampling_defaults = SamplingOptions(temperature=0.6, guidance_scale=1.5)
    saved = Pipeline(make_tokenizer(), prior).save_pretrained(tmp_path / "p", samples=False)
    loaded = Pipeline.from_pretrained(saved)

    def command(*options) -> np.ndarray:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        files = generate_main([str(saved), "--class-labels", "0", "2", "1", "--seed", "3", "--output-dir", str(out),
                               "--no-progress", *options])
        return np.stack([np.asarray(PIL.Image.open(f)) for f in files])

    def expected(**kw) -> np.ndarray:
        images = loaded.generate(class_labels=[0, 2, 1], seed=3, progress=False, **kw)
        return np.stack([np.asarray(im) for im in images])

    stored = command()
    assert np.array_equal(stored, expected())
    assert np.array_equal(stored, expected(temperature=0.6, guidance_scale=1.5))
    told = command("--temperature", "1", "--guidance-scale", "1", "--top-k", "4")
    assert np.array_equal(told, expected(temperature=1.0, guidance_scale=1.0, top_k=4))
    assert not np.array_equal(told, stored)


def test_default_guidance_lives_in_the_saved_prior(pipe, tmp_path):
    other = Pipeline(pipe.tokenizer, pipe.prior, default_guidance_scale=3.0)
    assert pipe.default_guidance_scale == 2.0 and pipe.prior.sampling_defaults.guidance_scale is None
    saved = other.save_pretrained(tmp_path / "p", samples=False)
    prior = ImagePrior.from_pretrained(saved / "prior")
    assert prior.sampling_defaults.guidance_scale == 3.0
    kw = dict(class_labels=[0, 1, 2], seed=6)
    from stage2_prior import sample_codes
    assert torch.equal(sample_codes(prior, 3, **kw), sample_codes(pipe.prior, 3, guidance_scale=3.0, **kw))
    loaded = Pipeline.from_pretrained(saved)
    assert loaded.default_guidance_scale == 3.0
    assert torch.equal(gen(loaded, output_type="codes", **kw), gen(other, output_type="codes", **kw))
    # the prior's value is the one read; the manifest's copy is read only for pipelines saved without it
    manifest = json.loads((saved / "pipeline.json").read_text())
    (saved / "pipeline.json").write_text(json.dumps({**manifest, "default_guidance_scale": 4.0}))
    assert Pipeline.from_pretrained(saved).default_guidance_scale == 3.0
    (saved / "prior" / "generation_config.json").unlink()
    old = Pipeline.from_pretrained(saved)
    assert old.default_guidance_scale == 4.0
    assert old.sampling_defaults == SamplingOptions(guidance_scale=4.0, temperature=1.0)
    del manifest["default_guidance_scale"]
    (saved / "pipeline.json").write_text(json.dumps(manifest))
    assert Pipeline.from_pretrained(saved).default_guidance_scale == 2.0


def test_from_components_takes_the_prior_s_guidance_then_the_run_s(tmp_path):
    make_tokenizer().save_pretrained(tmp_path / "tok")
    run = {"preview_guidance_scale": 3.0, "model": {"class_dropout_prob": 0.1}, "data": {}}
    (tmp_path / "run_config.json").write_text(json.dumps(run))
    make_prior().save_pretrained(tmp_path / "final")
    assert Pipeline.from_components(tmp_path / "tok", tmp_path / "final").default_guidance_scale == 3.0
    prior = make_prior()
    prior.sampling_defaults = SamplingOptions(guidance_scale=1.7)
    prior.save_pretrained(tmp_path / "final")
    assert Pipeline.from_components(tmp_path / "tok", tmp_path / "final").default_guidance_scale == 1.7
    assert Pipeline.from_components(tmp_path / "tok", tmp_path / "final",
                                    default_guidance_scale=2.5).default_guidance_scale == 2.5


def test_bad_generate_arguments(pipe):
    with pytest.raises(ValueError, match=r"unknown class name 'zebra'; known: \['cat', 'dog', 'owl'\]"):
        gen(pipe, class_labels=["dog", "zebra"])
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 3\)"):
        gen(pipe, class_labels=[0, 3])
    with pytest.raises(ValueError, match=r"output_type must be one of \['pil', 'pt', 'np', 'codes'\]"):
        pipe.generate(num_images=1, output_type="jpeg")
    with pytest.raises(ValueError, match="2 class labels for 3 images"):
        gen(pipe, num_images=3, class_labels=[0, 1])
    with pytest.raises(ValueError, match="unconditional"):
        gen(Pipeline(make_tokenizer(), make_prior(num_classes=0)), class_labels=[0])
    with pytest.raises(ValueError, match="guidance needs class_labels"):
        gen(pipe, num_images=2, guidance_scale=3.0)


# ------------------------------------------------------------------------------------------ encode / decode / complete


def test_encode_accepts_pil_uint8_and_float_inputs(pipe):
    pixels = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ref = pipe.encode(pixels)
    assert ref.shape == (3, 4, 4) and ref.dtype == torch.long
    assert torch.equal(ref, pipe.tokenizer.encode(pixels.float() / 127.5 - 1))
    assert torch.equal(ref, pipe.encode(pixels.float() / 255))
    hwc = pixels.permute(0, 2, 3, 1).numpy()
    assert torch.equal(ref, pipe.encode(hwc))
    assert torch.equal(ref, pipe.encode([PIL.Image.fromarray(a[..., 0]) for a in hwc]))
    assert torch.equal(ref[:1], pipe.encode(PIL.Image.fromarray(hwc[0, ..., 0]).convert("RGB")))
    assert torch.equal(ref[:1], pipe.encode(hwc[0, ..., 0]))                 # one [H, W] array
    assert torch.equal(ref, pipe.encode([p for p in pixels]))                 # a list of [C, H, W] tensors
    big = PIL.Image.fromarray(hwc[0, ..., 0]).resize((32, 32), PIL.Image.NEAREST)
    assert pipe.encode(big).shape == (1, 4, 4)                                # PIL images are resized
    images = pipe.decode(ref, output_type="pil")
    assert torch.equal(pipe.encode(images), pipe.encode(pipe.decode(ref, output_type="np")))


def test_bad_encode_inputs(pipe):
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        pipe.encode(torch.rand(2, 1, 8, 8) * 2 - 1)
    with pytest.raises(ValueError, match="has 3 channel"):
        pipe.encode(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="PIL images, torch tensors or numpy arrays"):
        pipe.encode("image.png")
    with pytest.raises(ValueError, match=r"codes must have shape \[B, 4, 4\]"):
        pipe.decode(torch.zeros(2, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        pipe.decode(torch.full((1, 4, 4), 40))


def test_complete_keeps_the_given_rows(pipe):
    images = gen(pipe, class_labels=[0, 1, 2], seed=1)
    codes = pipe.encode(images)
    kw = dict(class_labels=[2, 0, 1], seed=4, progress=False)
    for rows in (1, 3):
        done = pipe.complete(images, keep_rows=rows, output_type="codes", **kw)
        assert done.shape == (3, 4, 4)
        assert torch.equal(done[:, :rows], codes[:, :rows])
        assert not torch.equal(done[:, rows:], codes[:, rows:])
        assert torch.equal(pipe.complete(images, keep_rows=rows, output_type="pt", **kw),
                           pipe.decode(done, output_type="pt"))
    assert torch.equal(pipe.complete(images, keep_rows=4, output_type="codes", **kw), codes)
    assert torch.equal(pipe.complete(images, keep_rows=0, output_type="codes", **kw),
                       pipe.generate(class_labels=[2, 0, 1], seed=4, output_type="codes", progress=False))
    assert len(pipe.complete(pipe.decode(codes), keep_rows=2, **kw)) == 3    # PIL in, PIL out
    with pytest.raises(ValueError, match=r"keep_rows must lie in \[0, 4\]"):
        pipe.complete(images, keep_rows=5)
    with pytest.raises(ValueError, match="encode to a 8x8 grid, the prior takes 4x4"):
        pipe.complete(torch.rand(1, 1, 16, 16), keep_rows=1)


def test_bfloat16_prior(pipe):
    p = Pipeline(make_tokenizer(), make_prior()).to(dtype=torch.bfloat16)
    assert p.prior.lm.dtype == torch.bfloat16
    out = gen(p, class_labels=[0, 1], seed=0)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [
    (True, False, torch.bfloat16), (False, True, torch.bfloat16), (False, False, torch.float32)])
def test_loading_with_a_dtype_casts_the_prior_only(saved, monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    p = Pipeline.from_pretrained(saved, torch_dtype="auto")
    assert p.prior.lm.dtype == expected and next(p.tokenizer.parameters()).dtype == torch.float32
    assert Pipeline.from_pretrained(saved, torch_dtype="bfloat16").prior.lm.dtype == torch.bfloat16
    assert Pipeline.from_pretrained(saved).prior.lm.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be 'auto', 'float32'"):
        Pipeline.from_pretrained(saved, torch_dtype="int8")


def test_generate_command_takes_a_dtype(saved, tmp_path):
    from commands.pipeline_cli import generate_main

    written = generate_main([str(saved), "--num-images", "2", "--dtype", "bfloat16", "--no-progress",
                             "--output", str(tmp_path / "grid.png")])
    assert [p.name for p in written] == ["grid.png"] and written[0].is_file()


# ------------------------------------------------------------------------------------------ save / load


def test_saved_directory(saved, pipe):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["README.md", "pipeline.json", "prior", "samples.png", "tokenizer"]
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]    # no staging left behind
    manifest = json.loads((saved / "pipeline.json").read_text())
    assert manifest["components"]["tokenizer"]["class"] == "stage1_tokenizer.ImageTokenizer"
    assert manifest["components"]["prior"]["class"] == "stage2_prior.ImagePrior"
    assert manifest["components"]["prior"]["language_model"] == "LlamaForCausalLM"
    assert manifest["library"] == "discrete-imagegen" and manifest["library_version"]
    assert (manifest["grid"], manifest["image_size"], manifest["channels"]) == ([4, 4], [8, 8], 1)
    assert (manifest["codebook_size"], manifest["num_classes"], manifest["class_names"]) == (32, 3, list(NAMES))
    assert manifest["default_guidance_scale"] == 2.0
    with PIL.Image.open(saved / "samples.png") as grid:
        assert grid.size == (2 + 8 * 10, 2 + 3 * 10)                          # 8 per class, one row per class
    card = (saved / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "discrete-imagegen" and "class-conditional" in front["tags"]
    assert "![samples](samples.png)" in card and "one row per class (0 cat, 1 dog, 2 owl)" in card
    assert 'Pipeline.from_pretrained("OWNER/NAME")' in card and "No evaluation report" in card


def test_round_trip_gives_identical_images(saved, pipe):
    loaded = Pipeline.from_pretrained(saved)
    kw = dict(class_labels=["cat", "owl", "dog", "owl"], seed=9, temperature=0.9, top_p=0.95)
    assert torch.equal(gen(loaded, **kw), gen(pipe, **kw))
    assert loaded.class_names == list(NAMES) and loaded.default_guidance_scale == 2.0
    assert loaded.eval_report is None


def test_eval_report_in_the_card(pipe, tmp_path):
    report = {"fid": {"value": 12.3456, "feature_network": "inception-v3 2015-12-05", "reference": "test split",
                      "n": 10000},
              "inception_score": 8.25, "notes": "quick run"}
    out = pipe.save_pretrained(tmp_path / "p", eval_report=report, samples=False, repo_id="me/digits")
    card = (out / "README.md").read_text()
    assert "| metric | value | feature network | reference | n |" in card
    assert "| fid | 12.35 | inception-v3 2015-12-05 | test split | 10,000 |" in card
    assert "| inception_score | 8.25 |" in card and "- notes: quick run" in card
    assert yaml.safe_load(card.split("---\n")[1])["metrics"] == ["fid", "inception_score"]
    assert 'Pipeline.from_pretrained("me/digits")' in card and "samples.png" not in card
    assert json.loads((out / "eval_report.json").read_text()) == report
    # the report travels with the pipeline: reloaded and saved again, or kept when saving over the directory
    loaded = Pipeline.from_pretrained(out)
    assert loaded.eval_report == report
    again = loaded.save_pretrained(tmp_path / "q", samples=False)
    assert "| fid | 12.35 |" in (again / "README.md").read_text()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "eval_report.json").write_text(json.dumps({"metrics": {"fid": 3.5}, "n": 500}))
    card = (pipe.save_pretrained(tmp_path / "r", samples=False) / "README.md").read_text()
    assert "| fid | 3.5 |" in card and "- n: 500" in card
    # a report arriving later: re-render the card in place
    write_model_card(tmp_path / "r", eval_report={"fid": {"value": 2.0, "n": 50}})
    assert "| fid | 2 | 50 |" in (tmp_path / "r" / "README.md").read_text()


def test_card_metadata_is_a_hub_model_card(pipe, tmp_path):
    from huggingface_hub import ModelCard

    report = {"fid": {"value": 12.3456, "feature_network": "inception-v3 2015-12-05", "reference": "test split",
                      "n": 10000}, "inception_score": 8.25}
    out = pipe.save_pretrained(tmp_path / "p", eval_report=report, samples=False, repo_id="me/digits")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "discrete-imagegen" and "class-conditional" in card.data.tags
    assert card.data.model_name == "digits" and card.data.license is None
    results = {r.metric_type: r for r in card.data.eval_results}
    assert sorted(results) == ["fid", "inception_score"]
    assert results["fid"].metric_value == 12.3456 and results["fid"].metric_args == {
        "feature_network": "inception-v3 2015-12-05", "reference": "test split", "n": 10000}
    assert results["inception_score"].metric_args is None and results["fid"].task_type == "image-generation"
    assert "| fid | 12.35 | inception-v3 2015-12-05 | test split | 10,000 |" in card.text
    write_model_card(out, repo_id="me/digits", license="mit")
    again = ModelCard.load(out / "README.md")
    assert again.data.license == "mit" and len(again.data.eval_results) == 2


def test_saving_over_a_pipeline_replaces_it_and_keeps_other_files(pipe, tmp_path):
    target = pipe.save_pretrained(tmp_path / "p", samples=False)
    (target / "extra.txt").write_text("kept")
    other = Pipeline(pipe.tokenizer, pipe.prior, default_guidance_scale=3.0)
    other.save_pretrained(target, samples=False)
    assert (target / "extra.txt").read_text() == "kept"
    assert json.loads((target / "pipeline.json").read_text())["default_guidance_scale"] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not a pipeline directory"):
        pipe.save_pretrained(tmp_path / "busy", samples=False)


def test_load_errors(saved, tmp_path, tiny_tokenizer_dir):
    import shutil

    with pytest.raises(FileNotFoundError, match="is not a directory"):
        Pipeline.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a pipeline directory: it has no pipeline.json.*"
                                              "ImageTokenizer.from_pretrained.*imagegen-assemble"):
        Pipeline.from_pretrained(tiny_tokenizer_dir)
    for part in ("tokenizer", "prior"):
        broken = tmp_path / f"broken_{part}"
        shutil.copytree(saved, broken)
        weights = broken / part / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        with pytest.raises(CheckpointError, match=f"cannot load the pipeline's {part}.*truncated") as info:
            Pipeline.from_pretrained(broken)
        assert str(weights.parent) in str(info.value)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(saved, incomplete)
    shutil.rmtree(incomplete / "prior")
    with pytest.raises(CheckpointError, match="has no prior/ folder: it is incomplete"):
        Pipeline.from_pretrained(incomplete)
    edited = tmp_path / "edited"
    shutil.copytree(saved, edited)
    manifest = json.loads((edited / "pipeline.json").read_text())
    (edited / "pipeline.json").write_text(json.dumps({**manifest, "grid": [7, 7]}))
    with pytest.raises(CheckpointError, match=r"manifest does not describe its components \(grid: manifest"):
        Pipeline.from_pretrained(edited)
    (edited / "pipeline.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="pipeline.json is not valid JSON"):
        Pipeline.from_pretrained(edited)


def test_a_failed_save_leaves_the_old_pipeline(pipe, tmp_path, monkeypatch):
    target = pipe.save_pretrained(tmp_path / "p", samples=False)
    before = sorted(p.name for p in target.iterdir())

    def fail(self):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(Pipeline, "manifest", fail)       # components written, the manifest not
    with pytest.raises(RuntimeError, match="interrupted"):
        pipe.save_pretrained(target, samples=False)
    monkeypatch.undo()
    assert sorted(p.name for p in target.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    assert Pipeline.from_pretrained(target).grid == pipe.grid
