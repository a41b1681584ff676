"""YAML recipes and key=value overrides become typed configs; unknown keys are errors."""

from pathlib import Path

import pytest
import yaml

from stage1_tokenizer.train import TokenizerTrainConfig
from trainkit.config import ConfigError, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "tokenizer").glob("*.yaml")), ids=lambda p: p.name)
def test_every_tokenizer_recipe_loads(path):
    cfg = load_config(TokenizerTrainConfig, path)
    assert cfg.model.quantizer in ("vq", "gumbel")


def test_the_shapes32_recipe_is_an_rgb_vq_tokenizer_to_an_8x8_grid():
    cfg = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "shapes32_vq.yaml")
    assert (cfg.data.dataset, cfg.data.channels) == ("shapes32", 3)
    assert cfg.model.quantizer == "vq" and 32 // cfg.model.downsample_factor == 8
    assert (cfg.train.max_steps, cfg.train.eval_every) == (800, 200)


def test_overrides_are_typed_and_dotted():
    cfg = load_config(
        TokenizerTrainConfig, CONFIGS / "tokenizer" / "fashion_mnist_vq.yaml",
        ["train.lr=3e-4", "model.channel_mult=[1,1,2]", "output_dir=/tmp/x", "train.max_minutes=null",
         "model.vq_codebook_dim=8"],
    )
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.channel_mult == [1, 1, 2]
    assert cfg.output_dir == "/tmp/x"
    assert cfg.train.max_minutes is None
    assert cfg.model.vq_codebook_dim == 8


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.learning_rate=1", r"unknown config key\(s\) \['train.learning_rate'\]"),
        ("model.codebook_size=many", "expected an integer"),
        ("model.quantizer=fsq", "not one of"),
        ("train.max_steps", "key=value"),
        ("train.mixed_precision=fp8", "not one of"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TokenizerTrainConfig, CONFIGS / "tokenizer" / "fashion_mnist_vq.yaml", [override])


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  codebok_size: 3\n")
    with pytest.raises(ConfigError, match="model.codebok_size"):
        load_config(TokenizerTrainConfig, path)


def test_a_recipe_extends_its_base_and_overrides_only_what_it_names(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("model:\n  codebook_size: 64\n  base_channels: 16\ntrain:\n  lr: 0.01\n")
    (tmp_path / "sub" / "middle.yaml").write_text("base: ../root.yaml\ntrain:\n  max_steps: 30\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: middle.yaml\nmodel:\n  codebook_size: 32\n")
    cfg = load_config(TokenizerTrainConfig, tmp_path / "sub" / "leaf.yaml", ["train.lr=0.5"])
    assert (cfg.model.codebook_size, cfg.model.base_channels) == (32, 16)
    assert (cfg.train.max_steps, cfg.train.lr) == (30, 0.5)


def test_a_recipe_with_a_missing_or_circular_base_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"nowhere.yaml' not found \(the base of .*a.yaml'\)"):
        load_config(TokenizerTrainConfig, tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(TokenizerTrainConfig, tmp_path / "b.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="must be the path of another recipe"):
        load_config(TokenizerTrainConfig, tmp_path / "d.yaml")


def test_the_long_recipes_are_the_main_recipes_for_more_steps():
    """The long tokenizer is the main one trained for more steps, its discriminator's schedule and
    its checkpoints scaled with them, with its own dead-code threshold; the long prior
    is a larger model trained for more steps, with its own sampling defaults and no guide (its
    figures are without autoguidance); everything else is the main recipes'."""
    from stage2_prior.train import PriorTrainConfig
    from trainkit.config import to_dict

    for cls, main, long, own in [
        (TokenizerTrainConfig, "tokenizer/fashion_mnist_vq.yaml", "tokenizer/fashion_mnist_vq_long.yaml",
         {"adversarial": None, "train": ["eval_every", "checkpoint_every"],
          "model": ["vq_restart_threshold"]}),
        (PriorTrainConfig, "prior/fashion_mnist.yaml", "prior/fashion_mnist_long.yaml",
         {"model": None, "sampling": None}),
    ]:
        short_cfg, long_cfg = to_dict(load_config(cls, CONFIGS / main)), to_dict(load_config(cls, CONFIGS / long))
        assert long_cfg["train"]["max_steps"] > short_cfg["train"]["max_steps"]
        for cfg in (short_cfg, long_cfg):
            del cfg["train"]["max_steps"], cfg["output_dir"]
            cfg.pop("tokenizer", None)
            cfg.pop("guide_fraction", None)
            for section, keys in own.items():
                for key in keys or list(cfg[section]):
                    del cfg[section][key]
        assert long_cfg == short_cfg
    long_tokenizer = load_config(TokenizerTrainConfig, CONFIGS / "tokenizer/fashion_mnist_vq_long.yaml")
    assert long_tokenizer.model.vq_restart_threshold == 0.25
    long_prior = load_config(PriorTrainConfig, CONFIGS / "prior/fashion_mnist_long.yaml")
    assert long_prior.guide_fraction is None and long_prior.sampling.autoguidance_scale == 0.0
    assert (long_prior.model.num_layers, long_prior.model.hidden_size) == (8, 256)
    # its own sampling defaults, all named in its file: none passes over from the main recipe's
    own_sampling = yaml.safe_load((CONFIGS / "prior/fashion_mnist_long.yaml").read_text())["sampling"]
    assert own_sampling == to_dict(long_prior)["sampling"] == {
        "guidance_scale": 4.0, "guidance_schedule": "linear", "autoguidance_scale": 0.0, "temperature": 1.0,
        "top_k": 0, "top_p": 1.0}


def test_the_tokenizer_recipes_start_their_discriminator_at_the_same_fraction_of_their_steps():
    main, long = (load_config(TokenizerTrainConfig, CONFIGS / f"tokenizer/{name}.yaml")
                  for name in ("fashion_mnist_vq", "fashion_mnist_vq_long"))
    for cfg in (main, long):
        assert cfg.adversarial.enabled and cfg.adversarial.start_step + cfg.adversarial.ramp_steps < cfg.train.max_steps
    for key in ("start_step", "ramp_steps"):
        fractions = [getattr(cfg.adversarial, key) / cfg.train.max_steps for cfg in (main, long)]
        assert fractions[0] == pytest.approx(fractions[1]), key


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_console_scripts_exit_with_status_zero():
    """A console script exits with its function's return value: every `[project.scripts]`
    target returns an int (0), not the object its Python `main` returns."""
    import importlib
    import tomllib
    from pathlib import Path

    from trainkit.config import console_script

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert {"imagegen-main", "imagegen-generate", "imagegen-evaluate", "imagegen-push"} <= set(scripts)
    for name, target in scripts.items():
        module, attr = target.split(":")
        entry = getattr(importlib.import_module(module), attr)
        assert getattr(entry, "console_script", False) or entry.__annotations__.get("return") in (int, "int"), name
    seen = []
    assert console_script(lambda argv: seen.append(argv) or {"loss": 1.0})(["--x"]) == 0 and seen == [["--x"]]
