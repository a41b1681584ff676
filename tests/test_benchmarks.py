"""The benchmarks run: each script at its smallest size, on random models of the recipes' shapes,
printing the JSON object its docstring promises. (What they measure is for benchmarks/README.md;
here only that they still work with the code they measure.)"""

import json

import pytest
import torch

from conftest import run_module
from stage1_tokenizer import ImageTokenizer
from stage1_tokenizer.train import TokenizerTrainConfig
from stage2_prior import ImagePrior, PriorConfig, TokenLayout
from trainkit.config import load_config


def run_benchmark(script: str, *args: str, timeout: int = 300) -> dict:
    result = run_module([f"benchmarks/{script}", *args], timeout=timeout)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def fashion_pipeline(tmp_path_factory):
    """An untrained pipeline of the main recipe's shapes: 28x28 grey images, 7x7 grids of 1024
    codes, 10 classes (a small prior, so that sampling is quick)."""
    from pipelines import Pipeline

    torch.manual_seed(0)
    tokenizer = ImageTokenizer(load_config(TokenizerTrainConfig, "configs/tokenizer/fashion_mnist_vq.yaml").model).eval()
    layout = TokenLayout(1024, (7, 7), 10)
    prior = ImagePrior.from_config(PriorConfig(hidden_size=32, num_layers=1, num_heads=2), layout).eval()
    return Pipeline(tokenizer=tokenizer, prior=prior).save_pretrained(tmp_path_factory.mktemp("bench") / "pipe")


def test_machine_kind_names_the_cpu():
    result = run_module(["-c", "import sys; sys.path.insert(0, 'benchmarks'); import machine; "
                               "print(machine.machine_kind())"])
    assert result.stdout.split()[0] in ("AMX", "AVX-512", "AVX2", "other")


@pytest.mark.parametrize("stage", ["tokenizer", "prior"])
def test_trainer_overhead_runs_both_stages(stage):
    report = run_benchmark("trainer_overhead.py", "--stage", stage, "--steps", "2", "--warmup", "1",
                           "--threads", "1", "train.compile=false", "train.mixed_precision=no")
    assert report["stage"] == stage and report["precision"] == "no"
    assert report["bare_step_seconds"] > 0 and report["trainer_step_seconds"] > 0


def test_training_speed_benchmarks_report_the_peak_fraction():
    tokenizer = run_benchmark("tokenizer_training_speed.py", "--threads", "1", "--steps", "1", "--repeats", "1",
                              "train.mixed_precision=no")
    prior = run_benchmark("prior_training_speed.py", "--threads", "1", "--steps", "1", "--repeats", "1",
                          "train.mixed_precision=no")
    assert tokenizer["machine_kind"] == prior["machine_kind"]
    for row in (tokenizer["threads"]["1"]["trainer"], prior["threads"]["1"]):
        assert 0 < row["fraction_of_peak"] < 2


def test_prior_sampling_speed_compares_with_generate():
    report = run_benchmark("prior_sampling_speed.py", "--num-images", "2", "--repeats", "1")
    assert all(report["generate_greedy_matches_ours"].values())   # generate and ours sample the same distribution


def test_pipeline_speed_and_sampling_sweep_run_on_a_saved_pipeline(fashion_pipeline, tmp_path):
    speed = run_benchmark("pipeline_speed.py", "--pipeline", str(fashion_pipeline), "--num-images", "4",
                          "--threads", "1", "--repeats", "1")
    assert speed["machine_kind"]
    sweep = run_benchmark("sampling_sweep.py", "--pipeline", str(fashion_pipeline), "--num-samples", "20",
                          "--threads", "1", "--cache-dir", str(tmp_path))
    assert sweep["settings"] and sweep["best"] in sweep["settings"]


@pytest.mark.parametrize("script", ["fid_on_test_split.py", "pipeline_quality.py", "tokenizer_quality.py",
                                    "tokenizer_speed.py"])
def test_measurement_benchmarks_start(script):
    """The benchmarks that need trained models and hours of Inception passes: their imports and
    arguments still hold."""
    assert "usage:" in run_module([f"benchmarks/{script}", "--help"]).stdout
