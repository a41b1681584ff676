"""Sharded (FSDP2) training of the prior on two CPU processes (gloo), `train.shard=fsdp`."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import free_port, run_module
from hubserver import LocalHub, client, hub_env
from stage2_prior import ImagePrior
from test_prior_training import prior_args, read_metrics
from test_training import train_args

SHARD = ["train.shard=fsdp", "train.batch_size=16", "train.max_steps=40"]


def launcher(*extra: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
            "--main_process_port", str(free_port()), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", *extra]


def run_sharded(data, tokenizer, out, *extra, check=True):
    return run_module(prior_args(data, tokenizer, out, *SHARD, *extra), env={"ACCELERATE_USE_CPU": "1"},
                      launcher=launcher("--multi_gpu"), check=check)


def shard_reports(out: Path) -> list[dict]:
    return [json.loads((out / "shards" / f"rank-{r}.json").read_text()) for r in range(2)]


def gathered_checkpoint(checkpoint: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The model weights of a sharded checkpoint, consolidated offline into one state dict."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = tmp_path / f"{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint / "sharded"), str(target))
    return torch.load(target, weights_only=True)["model"]


@pytest.fixture(scope="module")
def sharded_run(digits_parquet, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp") / "prior"
    run_sharded(digits_parquet, tiny_tokenizer_dir, out)
    return out


def test_sharded_prior_trains_each_rank_holding_half(sharded_run):
    out = sharded_run
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    rows = read_metrics(out)
    evals = [r for r in rows if "val/bits_per_token" in r]
    assert [r["step"] for r in evals] == [20, 40]
    assert evals[-1]["val/bits_per_token"] < evals[0]["val/bits_per_token"] < evals[0]["val/uniform_bits_per_token"]
    assert evals[-1]["val/num_images"] == 297                 # the validation set once, over both ranks
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]
    reports = shard_reports(out)
    assert [r["rank"] for r in reports] == [0, 1]
    full = reports[0]["full_parameters"]
    local = [r["local_parameters"] for r in reports]
    assert all(0 < n < full for n in local) and sum(local) == full      # a partition: each rank its own part
    for r in reports:   # AdamW's two moments per local parameter, nothing more
        assert r["local_optimizer_state_bytes"] == 2 * r["local_parameter_bytes"] == 8 * r["local_parameters"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-0000040" / "sharded").glob("*.distcp")) == [
        "__0_0.distcp", "__1_0.distcp"]


def test_the_gathered_final_model_is_the_sharded_state_and_loads_on_one_process(sharded_run, tmp_path):
    out = sharded_run
    final = load_file(str(out / "final" / "model.safetensors"))
    sharded = gathered_checkpoint(out / "checkpoints" / "step-0000040", tmp_path)
    expected = {name.removeprefix("lm."): value for name, value in sharded.items()}
    assert final.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=0, rtol=0, msg=name)

    prior = ImagePrior.from_pretrained(out / "final")
    for name, value in prior.lm.state_dict().items():
        torch.testing.assert_close(value, final[name], atol=0, rtol=0, msg=name)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(out / "final")
    ids = torch.tensor([[prior.layout.class_id(torch.tensor([3])).item(), 1, 2, 3]])
    torch.testing.assert_close(lm(input_ids=ids).logits, prior.lm(input_ids=ids).logits)


def test_resume_from_a_sharded_checkpoint_matches_the_uninterrupted_run(sharded_run, digits_parquet,
                                                                       tiny_tokenizer_dir, tmp_path):
    copied = tmp_path / "step-0000020"
    shutil.copytree(sharded_run / "checkpoints" / "step-0000020", copied)
    out = tmp_path / "resumed"
    result = run_sharded(digits_parquet, tiny_tokenizer_dir, out, f"resume={copied}")
    assert "at step 20" in result.stdout + result.stderr
    final = load_file(str(out / "final" / "model.safetensors"))
    expected = load_file(str(sharded_run / "final" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=0, rtol=0, msg=name)
    after = [r for r in read_metrics(sharded_run) if r["step"] > 20]
    assert read_metrics(out) == after                    # the same losses, lrs and evaluations from step 21 on


def test_resume_of_an_unsharded_prior_run_matches_too(digits_parquet, tiny_tokenizer_dir, tmp_path):
    """The prior's class dropout draws from the CPU RNG that starting the resumed epoch's loader also
    draws from: the resumed run must not be one draw ahead."""
    args = ["train.batch_size=16", "train.max_steps=40", "train.eval_every=1000"]
    ref = tmp_path / "reference"
    run_module(prior_args(digits_parquet, tiny_tokenizer_dir, ref, *args))
    out = tmp_path / "resumed"
    run_module(prior_args(digits_parquet, tiny_tokenizer_dir, out, *args,
                          f"resume={ref / 'checkpoints' / 'step-0000020'}"))
    final = load_file(str(out / "final" / "model.safetensors"))
    expected = load_file(str(ref / "final" / "model.safetensors"))
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=0, rtol=0, msg=name)


def test_sharded_run_pushes_the_gathered_model_at_every_save_under_bf16(digits_parquet, tiny_tokenizer_dir,
                                                                        tmp_path):
    out = tmp_path / "prior"
    with LocalHub(tmp_path / "hub") as hub:
        env = {**hub_env(hub, tmp_path / "home"), "ACCELERATE_USE_CPU": "1"}
        run_module(prior_args(digits_parquet, tiny_tokenizer_dir, out, *SHARD, "train.max_steps=20",
                              "train.checkpoint_every=10", "train.eval_every=1000", "train.mixed_precision=bf16",
                              "hub.repo_id=user/sharded", "hub.strategy=every_save"),
                   env=env, launcher=launcher("--multi_gpu"))
        commits = client(hub, tmp_path / "home2", f"""
            from huggingface_hub import HfApi, hf_hub_download
            print("\\n".join(c.title for c in HfApi().list_repo_commits("user/sharded")))
            remote = open(hf_hub_download("user/sharded", "model.safetensors"), "rb").read()
            assert remote == open("{out}/final/model.safetensors", "rb").read()
            from stage2_prior import ImagePrior
            ImagePrior.from_pretrained("user/sharded")
        """)
    assert "step 10" in commits and "step 20" in commits
    assert json.loads((out / "run_info.json").read_text())["mixed_precision"] == "bf16"
    losses = [r["train/loss"] for r in read_metrics(out) if "train/loss" in r]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for r in shard_reports(out):   # float32 weights at rest; bf16 only in the gathered compute copies
        assert r["local_parameter_bytes"] == 4 * r["local_parameters"]
    final = load_file(str(out / "final" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in final.values())


def test_sharded_accumulation_and_clipping_train_as_ddp_does(digits_parquet, tiny_tokenizer_dir, tmp_path):
    args = ["train.batch_size=16", "train.max_steps=10", "train.grad_accum_steps=2", "train.grad_clip=0.05",
            "train.eval_every=1000", "train.checkpoint_every=1000"]
    sharded, ddp = tmp_path / "sharded", tmp_path / "ddp"
    # each run builds its own token cache: a run that builds it initialises the model after the
    # encoding's random draws, one that reuses it does not
    run_sharded(digits_parquet, tiny_tokenizer_dir, sharded, *args, f"token_cache_dir={sharded}_tokens")
    run_module(prior_args(digits_parquet, tiny_tokenizer_dir, ddp, *args, f"token_cache_dir={ddp}_tokens"),
               env={"ACCELERATE_USE_CPU": "1"}, launcher=launcher("--multi_gpu"))
    rows = {out: [r for r in read_metrics(out) if "train/loss" in r] for out in (sharded, ddp)}
    assert [r["step"] for r in rows[sharded]] == [5, 10]
    assert [r["train/samples_seen"] for r in rows[sharded]] == [5 * 2 * 32, 10 * 2 * 32]
    for a, b in zip(rows[sharded], rows[ddp]):
        assert a["train/lr"] == b["train/lr"]
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    final, expected = (load_file(str(out / "final" / "model.safetensors")) for out in (sharded, ddp))
    for name in expected:   # the same updates, up to the order of float additions in the reductions
        torch.testing.assert_close(final[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_accelerates_fsdp_plugin_on_cpu_processes_fails_loudly(digits_parquet, tiny_tokenizer_dir, tmp_path):
    args = prior_args(digits_parquet, tiny_tokenizer_dir, tmp_path / "p", "train.max_steps=2", "train.batch_size=16")
    result = run_module(args, env={"ACCELERATE_USE_CPU": "1"}, check=False,
                        launcher=launcher("--use_fsdp", "--fsdp_version", "2"))
    assert result.returncode != 0
    assert "train.shard=fsdp" in result.stderr and "--use_fsdp" in result.stderr
    assert not (tmp_path / "p" / "final").exists()


def test_sharding_on_one_process_fails_loudly(digits_parquet, tiny_tokenizer_dir, tmp_path):
    result = run_module(prior_args(digits_parquet, tiny_tokenizer_dir, tmp_path / "p", *SHARD), check=False)
    assert result.returncode != 0 and "needs several processes" in result.stderr


def test_sharding_the_tokenizer_is_refused_with_the_way_out(digits_parquet, tmp_path):
    result = run_module(train_args(digits_parquet, tmp_path / "t", "train.max_steps=2", "train.shard=fsdp"),
                        check=False)
    assert result.returncode != 0
    assert "TokenizerTask cannot be sharded" in result.stderr and "drop train.shard" in result.stderr


def test_weight_ema_under_sharding_is_a_clear_error(digits_parquet, tiny_tokenizer_dir, tmp_path):
    result = run_module(prior_args(digits_parquet, tiny_tokenizer_dir, tmp_path / "p", *SHARD,
                                   "train.ema_decay=0.99"), check=False)
    assert result.returncode != 0 and "train.ema_decay is not supported with train.shard=fsdp" in result.stderr
