"""One persistence mechanism for every component: atomic directories, strict loads, the classifier's files."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import trainkit.hub as hub
from evalkit.classifier import SmallCNN, load_classifier, save_classifier
from evalkit.features import WEIGHTS_DIR
from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig
from stage2_prior.layout import TokenLayout
from stage2_prior.model import ImagePrior, PriorConfig
from trainkit.files import CheckpointError, publish_dir


def tiny_tokenizer(**kw) -> ImageTokenizer:
    cfg = dict(in_channels=1, image_size=8, base_channels=8, channel_mult=[1, 2], num_downsamples=1,
               latent_channels=8, codebook_size=32, vq_kmeans_init=False)
    return ImageTokenizer(ImageTokenizerConfig(**{**cfg, **kw})).eval()


def tiny_prior(seed: int = 0) -> ImagePrior:
    torch.manual_seed(seed)
    layout = TokenLayout(codebook_size=16, grid=(2, 2), num_classes=2, class_names=None)
    return ImagePrior.from_config(PriorConfig(hidden_size=32, num_layers=1, num_heads=2), layout).eval()


def hidden(directory):
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------ publish_dir


def test_publish_dir_replaces_the_directory_in_one_rename(tmp_path):
    target = tmp_path / "out"
    with publish_dir(target) as staging:
        assert staging.parent == tmp_path and not target.exists()
        (staging / "a.txt").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    (target / "stale.txt").write_text("old")
    with publish_dir(target) as staging:
        (staging / "a.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "2"
    with publish_dir(target, keep_old_files=True) as staging:
        (staging / "b.txt").write_text("3")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "2", "b.txt": "3"}
    assert hidden(tmp_path) == []


def test_publish_dir_leaves_the_old_directory_when_writing_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with publish_dir(target) as staging:
            (staging / "a.txt").write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in target.iterdir()] == ["a.txt"] and (target / "a.txt").read_text() == "old"
    assert hidden(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        with publish_dir(tmp_path / "file"):
            pass


def test_publish_dir_over_the_working_directory(tmp_path, monkeypatch):
    target = tmp_path / "here"
    target.mkdir()
    (target / "keep.txt").write_text("k")
    monkeypatch.chdir(target)
    with publish_dir(".") as staging:
        (staging / "a.txt").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "keep.txt"]
    assert hidden(tmp_path) == [] and Path.cwd() == target


# ------------------------------------------------------------------------------------------ components


def test_an_interrupted_tokenizer_save_leaves_the_old_model(tmp_path, monkeypatch):
    old = tiny_tokenizer(codebook_size=32)
    old.save_pretrained(tmp_path / "tok")

    def fail(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(hub, "atomic_write_text", fail)  # weights written, config.json not
    with pytest.raises(OSError, match="no space"):
        tiny_tokenizer(codebook_size=64).save_pretrained(tmp_path / "tok")
    monkeypatch.undo()
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.codebook_size == 32
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), old.state_dict().values()))
    assert hidden(tmp_path) == []


def test_an_interrupted_prior_save_leaves_the_old_model(tmp_path, monkeypatch):
    old = tiny_prior(seed=0)
    old.save_pretrained(tmp_path / "prior")

    def fail(self, directory):
        raise OSError("no space left on device")

    monkeypatch.setattr(TokenLayout, "save", fail)  # the language model written, the layout not
    with pytest.raises(OSError, match="no space"):
        tiny_prior(seed=1).save_pretrained(tmp_path / "prior")
    monkeypatch.undo()
    loaded = ImagePrior.from_pretrained(tmp_path / "prior")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), old.state_dict().values()))
    assert hidden(tmp_path) == []


def test_saving_over_a_model_directory_keeps_files_it_does_not_write(tmp_path):
    final = tmp_path / "final"
    tiny_tokenizer().save_pretrained(final)
    (final / "eval_metrics.json").write_text("{}")
    assert tiny_tokenizer(codebook_size=64).save_pretrained(final) == final
    assert sorted(p.name for p in final.iterdir()) == ["config.json", "eval_metrics.json", "model.safetensors"]
    assert ImageTokenizer.from_pretrained(final).codebook_size == 64


def test_saved_tokenizer_config_keeps_its_form(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "ImageTokenizer" and config["_library_version"]
    assert config["codebook_size"] == 32
    del config["_class_name"], config["_library_version"]        # a directory written without them loads too
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert ImageTokenizer.from_pretrained(tmp_path).codebook_size == 32
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "ImagePrior"}))
    with pytest.raises(CheckpointError, match="holds a ImagePrior, not a ImageTokenizer"):
        ImageTokenizer.from_pretrained(tmp_path)


def test_loads_are_strict_about_extra_tensors(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    weights = tmp_path / "tok" / "model.safetensors"
    save_file({**load_file(str(weights)), "extra.weight": torch.zeros(2)}, str(weights))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \['extra.weight'\]"):
        ImageTokenizer.from_pretrained(tmp_path / "tok")
    tiny_prior().save_pretrained(tmp_path / "prior")
    weights = tmp_path / "prior" / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("mlp.down_proj.weight"))
    del state[name]
    save_file(state, str(weights), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="do not match the model's config.*missing_keys"):
        ImagePrior.from_pretrained(tmp_path / "prior")


def test_bad_paths_give_our_errors_for_every_component(tmp_path):
    for cls in (ImageTokenizer, ImagePrior, SmallCNN):
        with pytest.raises(FileNotFoundError, match="not a directory and does not look like a hub repo id"):
            cls.from_pretrained(tmp_path / "missing" / "dir")
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    with pytest.raises(TypeError, match="device"):
        ImageTokenizer.from_pretrained(tmp_path / "tok", device="cpu")    # an unknown option is not ignored


def test_prior_directory_is_a_transformers_model(tmp_path):
    from transformers import AutoModelForCausalLM

    prior = tiny_prior()
    prior.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "token_layout.json"} <= {p.name for p in tmp_path.iterdir()}
    lm = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), prior.lm.state_dict().values()))


# ------------------------------------------------------------------------------------------ classifier


def test_classifier_saves_the_shipped_files_again_byte_for_byte(tmp_path):
    model, info = load_classifier(WEIGHTS_DIR)
    weights, config = save_classifier(model, tmp_path)
    assert weights.read_bytes() == (WEIGHTS_DIR / weights.name).read_bytes()
    assert json.loads(config.read_text()) == json.loads((WEIGHTS_DIR / config.name).read_text()) == info
    again = SmallCNN.from_pretrained(tmp_path)
    assert again.info["test_accuracy"] == info["test_accuracy"]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    model.save_pretrained(tmp_path / "named", name="mine", info={"note": "x"})
    assert json.loads((tmp_path / "named" / "mine.json").read_text())["note"] == "x"
    assert SmallCNN.from_pretrained(tmp_path / "named", name="mine").info == {"note": "x"}
