"""The tokenizer trains through the shared loop: loss falls, checkpoints resume exactly,
two processes keep one codebook, and bad runs stop loudly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TINY_TOKENIZER, free_port, run_module
from stage1_tokenizer import ImageTokenizer
from commands.evaluate import run as evaluate_main


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "stage1_tokenizer.train", "--config", "configs/tokenizer/fashion_mnist_vq.yaml",
            f"data.dataset={data}", f"output_dir={out}", *TINY_TOKENIZER, *extra]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe, precision", [("fashion_mnist_vq.yaml", "bf16"), ("fashion_mnist_gumbel.yaml", "no")])
def test_short_run_loss_falls_and_writes_everything(digits_parquet, tmp_path, recipe, precision):
    out = tmp_path / "run"
    args = train_args(digits_parquet, out, "train.max_steps=60", "model.gumbel_tau_steps=60",
                      "model.gumbel_kl_warmup_steps=20", f"train.mixed_precision={precision}")
    args[3] = f"configs/tokenizer/{recipe}"
    run_module(args)
    rows = read_metrics(out)
    train = [r["train/recon_loss"] for r in rows if "train/recon_loss" in r]
    assert train[-1] < 0.6 * train[0], train
    evals = [r for r in rows if "val/psnr" in r]
    assert [r["step"] for r in evals] == [20, 40, 60]
    assert evals[-1]["val/psnr"] > evals[0]["val/psnr"]
    assert evals[-1]["val/num_images"] == 297  # the whole test split
    assert 0 < evals[-1]["val/codebook_usage"] <= 1
    assert (out / "samples" / "step-0000060.png").is_file()
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    model = ImageTokenizer.from_pretrained(out / "final")
    assert model.config.image_size == 8 and model.grid_size == (4, 4)
    final_metrics = json.loads((out / "final" / "eval_metrics.json").read_text())
    assert final_metrics["step"] == 60
    assert json.loads((out / "run_info.json").read_text())["mixed_precision"] == precision
    # the evaluation command reproduces the final validation figures on the same split
    report = evaluate_main(["tokenizer", str(out / "final"), "--dataset", str(digits_parquet), "--split", "test",
                            "--metrics", "mse,psnr,usage", "--output", str(tmp_path / "report.json")])
    figures = {name: figure["value"] for name, figure in report["metrics"].items()}
    assert report["metrics"]["psnr"]["num_samples"] == 297
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]["psnr"]["value"] == figures["psnr"]
    if precision == "no":
        assert figures["psnr"] == pytest.approx(final_metrics["psnr"], abs=1e-3)
        assert figures["codebook_usage"] == final_metrics["codebook_usage"]


def test_the_shapes32_recipe_trains_rgb_and_reports_colour_errors(tmp_path):
    out = tmp_path / "shapes"
    tiny = ["model.base_channels=8", "model.latent_channels=8", "model.codebook_size=32", "train.batch_size=16",
            "train.max_steps=2", "train.warmup_steps=1", "train.log_every=1", "train.eval_every=2",
            "train.checkpoint_every=2", "train.progress_bar=false", "train.max_minutes=null",
            "train.mixed_precision=no", "train.num_threads=1", "data.max_train_samples=64", "data.max_val_samples=32"]
    run_module(["-m", "stage1_tokenizer.train", "--config", "configs/tokenizer/shapes32_vq.yaml",
                f"output_dir={out}", *tiny])
    evals = [r for r in read_metrics(out) if "val/psnr" in r]
    assert [r["step"] for r in evals] == [2]
    assert evals[-1]["val/num_images"] == 32
    assert evals[-1]["val/chroma_error"] > 0 and evals[-1]["val/mean_color_error"] > 0
    model = ImageTokenizer.from_pretrained(out / "final")
    assert (model.config.in_channels, model.config.image_size, model.grid_size) == (3, 32, (8, 8))
    report = evaluate_main(["tokenizer", str(out / "final"), "--dataset", "shapes32", "--num-samples", "48",
                            "--metrics", "mse,psnr,usage"])
    assert {"chroma_error", "mean_color_error"} <= set(report["metrics"])
    assert report["metrics"]["chroma_error"]["num_samples"] == 48


def test_kill_and_resume_matches_an_uninterrupted_run(digits_parquet, tmp_path):
    common = ["train.max_steps=40", "train.checkpoint_every=10", "train.eval_every=1000", "train.keep_checkpoints=3"]
    ref = tmp_path / "reference"
    run_module(train_args(digits_parquet, ref, *common))

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *train_args(digits_parquet, out, *common)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step-0000020":
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    killed_at = int(latest.read_text().strip().split("-")[1])
    assert 20 <= killed_at < 40

    result = run_module(train_args(digits_parquet, out, *common, "resume=latest"))
    assert f"at step {killed_at}" in result.stdout + result.stderr
    final = load_file(str(out / "final" / "model.safetensors"))
    expected = load_file(str(ref / "final" / "model.safetensors"))
    assert final.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(final[name], expected[name], atol=0, rtol=0, msg=name)
    steps = [r["step"] for r in read_metrics(out) if "train/loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no step logged twice


def test_two_processes_keep_identical_codebooks(digits_parquet, tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    args = train_args(digits_parquet, out, "train.max_steps=30", "train.eval_every=15", "train.batch_size=16")
    run_module(args, env={"ACCELERATE_USE_CPU": "1"}, launcher=launcher)
    info = json.loads((out / "run_info.json").read_text())
    assert info["num_processes"] == 2
    evals = [r for r in read_metrics(out) if "val/psnr" in r]
    assert evals and all(r["val/codebook_rank_max_diff"] == 0.0 for r in evals)
    assert evals[-1]["val/num_images"] == 297  # gathered over both ranks, no duplicates


def test_mislaunch_fails_loudly(digits_parquet, tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    args = train_args(digits_parquet, tmp_path / "bad", "train.max_steps=2")
    result = run_module(args, env={"ACCELERATE_USE_CPU": None}, launcher=launcher, check=False)
    assert result.returncode != 0
    assert "ACCELERATE_USE_CPU=1" in result.stderr


def test_unknown_override_is_an_error(digits_parquet, tmp_path):
    result = run_module(train_args(digits_parquet, tmp_path / "x", "train.learnign_rate=1"), check=False)
    assert result.returncode != 0 and "train.learnign_rate" in result.stderr


def test_bad_data_settings_are_a_clear_error(digits_parquet, tmp_path):
    result = run_module(train_args(digits_parquet, tmp_path / "x", "data.image_size=9"), check=False)
    assert result.returncode != 0
    assert "error: data.image_size=9 is not divisible" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_module(train_args(tmp_path / "nowhere", tmp_path / "x"), check=False)
    assert result.returncode != 0 and "nowhere" in result.stderr and "Traceback" not in result.stderr
