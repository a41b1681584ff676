"""The prior trains through the shared loop on a tokenizer's cached codes."""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_PRIOR, free_port, run_module
from stage2_prior import ImagePrior
from stage2_prior.train import PriorTrainConfig
from trainkit.config import load_config


def prior_args(data: Path, tokenizer: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "stage2_prior.train", "--config", "configs/prior/fashion_mnist.yaml", f"data.dataset={data}",
            f"tokenizer={tokenizer}", f"output_dir={out}", f"token_cache_dir={out.parent / 'tokens'}",
            *TINY_PRIOR, *extra]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_conditional_run_nll_falls(digits_parquet, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "prior"
    run_module(prior_args(digits_parquet, tiny_tokenizer_dir, out, "train.max_steps=60", "train.compile=true"))
    evals = [r for r in read_metrics(out) if "val/bits_per_token" in r]
    assert [r["step"] for r in evals] == [20, 40, 60]
    assert evals[-1]["val/bits_per_token"] < evals[0]["val/bits_per_token"]
    assert evals[-1]["val/bits_per_token"] < 0.9 * evals[-1]["val/uniform_bits_per_token"]
    assert evals[-1]["val/num_images"] == 297
    assert (out / "samples" / "step-0000060.png").is_file()
    prior = ImagePrior.from_pretrained(out / "final")
    assert prior.layout.num_classes == 10 and prior.layout.grid == (4, 4) and prior.layout.codebook_size == 32
    recipe = load_config(PriorTrainConfig, "configs/prior/fashion_mnist.yaml")
    assert prior.sampling_defaults.guidance_scale == recipe.sampling.guidance_scale != 1.0   # saved with the model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(out / "final")
    assert type(lm).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([[prior.layout.class_id(torch.tensor([3])).item(), 1, 2, 3]])
    torch.testing.assert_close(lm(input_ids=ids).logits, prior.lm(input_ids=ids).logits)


def test_unconditional_gpt2_prior(digits_parquet, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "prior"
    run_module(prior_args(digits_parquet, tiny_tokenizer_dir, out, "train.max_steps=20", "conditional=false",
                          "model.arch=gpt2", "sampling.temperature=0.9", "sampling.top_k=7"))
    prior = ImagePrior.from_pretrained(out / "final")
    assert not prior.layout.conditional and type(prior.lm).__name__ == "GPT2LMHeadModel"
    defaults = prior.sampling_defaults          # the recipe's sampling section, saved with the model
    assert (defaults.guidance_scale, defaults.temperature, defaults.top_k) == (None, 0.9, 7)
    assert defaults.top_p is None                # "no top-p" (1.0) reads back as unset: no filter


def test_the_guide_is_the_prior_at_its_fraction_of_the_steps(digits_parquet, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "prior"
    run_module(prior_args(digits_parquet, tiny_tokenizer_dir, out, "train.max_steps=20", "guide_fraction=0.25",
                          "sampling.autoguidance_scale=1.5"))
    snapshot = out / "snapshots" / "step-0000005"
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [snapshot.name]
    prior = ImagePrior.from_pretrained(out / "final")
    assert prior.sampling_defaults.autoguidance_scale == 1.5 and prior.guide is not None
    early = ImagePrior.from_pretrained(snapshot).state_dict()
    assert all(torch.equal(v, early[k]) for k, v in prior.guide.state_dict().items())
    assert not torch.equal(prior.lm.lm_head.weight, prior.guide.lm.lm_head.weight)
    assert (out / "samples" / "step-0000020.png").is_file()      # the previews sample with the guide


def test_guide_settings_are_checked():
    recipe = "configs/prior/fashion_mnist.yaml"
    for bad, message in (("guide_fraction=1.5", "must lie in \\(0, 1\\)"),
                         ("guide_fraction=null", "needs a guide")):
        with pytest.raises(ValueError, match=message):
            load_config(PriorTrainConfig, recipe, [bad, "sampling.autoguidance_scale=1.0"])


def test_two_process_prior_training(digits_parquet, tiny_tokenizer_dir, tmp_path):
    out = tmp_path / "prior"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    run_module(prior_args(digits_parquet, tiny_tokenizer_dir, out, "train.max_steps=20", "train.batch_size=16"),
               env={"ACCELERATE_USE_CPU": "1"}, launcher=launcher)
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    evals = [r for r in read_metrics(out) if "val/bits_per_token" in r]
    assert evals[-1]["val/num_images"] == 297


def test_bad_prior_settings(digits_parquet, tiny_tokenizer_dir, tmp_path):
    result = run_module(prior_args(digits_parquet, tmp_path / "no_tokenizer", tmp_path / "p"), check=False)
    assert result.returncode != 0 and "no_tokenizer" in result.stderr and "Traceback" not in result.stderr
    result = run_module(prior_args(digits_parquet, tiny_tokenizer_dir, tmp_path / "p", "model.num_heads=3"),
                        check=False)
    assert result.returncode != 0 and "not divisible by num_heads" in result.stderr



def test_initial_weights_do_not_depend_on_whether_the_token_cache_was_built(digits_parquet, tiny_tokenizer_dir,
                                                                            tmp_path):
    from stage2_prior.train import PriorTask

    cfg = load_config(PriorTrainConfig, "configs/prior/fashion_mnist.yaml",
                      [f"data.dataset={digits_parquet}", f"tokenizer={tiny_tokenizer_dir}",
                       f"token_cache_dir={tmp_path / 'tokens'}", *TINY_PRIOR])
    built, reused = PriorTask(cfg), PriorTask(cfg)          # the first encodes the data, the second reads it back
    for (name, a), (_, b) in zip(built.model.state_dict().items(), reused.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_code_embeddings_from_vectors_keep_their_geometry():
    from stage2_prior.layout import TokenLayout
    from stage2_prior.model import PriorConfig

    layout = TokenLayout(32, (4, 4), 10)
    prior = ImagePrior.from_config(PriorConfig(hidden_size=64, num_layers=1, num_heads=2), layout)
    table = prior.lm.get_input_embeddings().weight
    before = table.detach().clone()
    vectors = torch.randn(32, 8) + 5.0                  # off-centre: the projection centres them
    vectors[7] = vectors[3]
    prior.init_code_embeddings(vectors, torch.Generator().manual_seed(0))
    rows = table[:32].detach()
    assert torch.equal(rows[7], rows[3]) and not torch.equal(rows[3], rows[4])
    assert torch.equal(table[32:].detach(), before[32:])               # class, null and BOS tokens keep theirs
    assert abs(rows.std().item() - before[:32].std().item()) < 1e-4
    centred = vectors - vectors.mean(0)
    fit = torch.linalg.lstsq(centred, rows).solution                     # a linear map of the centred vectors
    torch.testing.assert_close(centred @ fit, rows, atol=1e-4, rtol=1e-4)
    distances = torch.stack([torch.pdist(centred), torch.pdist(rows)])
    assert torch.corrcoef(distances)[0, 1] > 0.8                        # near codes start near
    with pytest.raises(ValueError, match="one vector per image code"):
        prior.init_code_embeddings(torch.randn(31, 8))


def test_the_prior_can_start_from_the_tokenizers_code_vectors(digits_parquet, tiny_tokenizer_dir, tmp_path):
    from stage2_prior.train import PriorTask

    args = [f"data.dataset={digits_parquet}", f"tokenizer={tiny_tokenizer_dir}",
            f"token_cache_dir={tmp_path / 'tokens'}", *TINY_PRIOR]
    task = PriorTask(load_config(PriorTrainConfig, "configs/prior/fashion_mnist.yaml",
                                 [*args, "model.code_embedding_init=codebook"]))
    plain = PriorTask(load_config(PriorTrainConfig, "configs/prior/fashion_mnist.yaml", args))
    size = task.layout.codebook_size
    rows = task.model.lm.get_input_embeddings().weight[:size].detach()
    vectors = task.tokenizer.code_vectors()
    centred = vectors - vectors.mean(0)
    fit = torch.linalg.lstsq(centred, rows).solution
    torch.testing.assert_close(centred @ fit, rows, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain.model.lm.get_input_embeddings().weight[:size], rows)
    for (name, a), (_, b) in zip(task.model.lm.model.layers.state_dict().items(),
                                 plain.model.lm.model.layers.state_dict().items()):
        assert torch.equal(a, b), name                                   # only the code embeddings differ
    with pytest.raises(ValueError, match="needs the tokenizer's code vectors"):
        PriorTask.on_codes(task.config, task.layout, task.train_dataset)


def test_muon_takes_the_blocks_matrices_of_both_architectures():
    """Muon's share of the prior: every 2-D weight inside the transformer blocks; the embeddings and
    the output layer stay on AdamW."""
    from stage2_prior.layout import TokenLayout
    from stage2_prior.model import PriorConfig

    layout = TokenLayout(32, (4, 4), 10)
    for arch, per_block, kinds in [
        ("llama", 7, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}),
        ("gpt2", 4, {"c_attn", "c_proj", "c_fc"}),          # attn.c_proj and mlp.c_proj
    ]:
        prior = ImagePrior.from_config(PriorConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=2), layout)
        hidden = {id(p) for p in prior.hidden_matrices()}
        names = {name for name, p in prior.named_parameters() if id(p) in hidden}
        assert len(names) == len(hidden) == 2 * per_block
        assert {name.split(".")[-2] for name in names} == kinds
        assert all(".layers." in name or ".h." in name for name in names)
