"""The inference path (pipelines) and the torch-only parts of the data layer load no datasets/pyarrow."""

import textwrap

from conftest import run_module

TRAINING_ONLY = ("datasets", "pyarrow")

PIPELINE_ROUND_TRIP = textwrap.dedent("""
    import sys
    import PIL.Image
    import torch
    import pipelines
    from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig
    from stage2_prior import ImagePrior, PriorConfig, TokenLayout

    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=[1, 2], num_downsamples=1,
                               latent_channels=8, codebook_size=32, vq_kmeans_init=False)
    layout = TokenLayout(32, (4, 4), 3, ["cat", "dog", "owl"])
    prior = ImagePrior.from_config(PriorConfig(hidden_size=32, num_layers=2, num_heads=2), layout)
    saved = pipelines.Pipeline(tokenizer=ImageTokenizer(cfg).eval(), prior=prior.eval()).save_pretrained(sys.argv[1])
    pipe = pipelines.Pipeline.from_pretrained(saved)
    codes = pipe.encode(PIL.Image.new("RGB", (13, 11), (90, 30, 200)))   # converted, cropped and resized
    assert codes.shape == (1, 4, 4), codes.shape
    images = pipe.generate(num_images=2, class_labels=[0, 1], seed=0, progress=False)
    assert len(images) == 2 and images[0].size == (8, 8)
    assert pipe.decode(codes)[0].size == (8, 8)
    loaded = [name for name in {TRAINING_ONLY!r} if name in sys.modules]
    assert not loaded, f"the inference path imported {{loaded}}"
    print("ok")
""").format(TRAINING_ONLY=TRAINING_ONLY)


def test_pipeline_round_trip_imports_no_training_data_stack(tmp_path):
    result = run_module(["-c", PIPELINE_ROUND_TRIP, str(tmp_path / "pipe")])
    assert result.stdout.strip().endswith("ok")


def test_transforms_and_config_import_without_datasets():
    script = textwrap.dedent(f"""
        import sys
        import torch
        from trainkit.data import DataConfig
        from trainkit.data.transforms import ImageTransform
        from trainkit.data import ImageTransform as exported
        assert exported is ImageTransform
        x = torch.arange(7 * 9, dtype=torch.uint8).reshape(1, 1, 7, 9)
        assert ImageTransform((4, 4), "resize")(x).shape == (1, 1, 4, 4)
        assert DataConfig().dataset == "fashion_mnist"
        loaded = [name for name in {TRAINING_ONLY!r} if name in sys.modules]
        assert not loaded, f"trainkit.data.transforms imported {{loaded}}"
        print("ok")
    """)
    assert run_module(["-c", script]).stdout.strip().endswith("ok")
