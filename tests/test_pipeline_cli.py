"""The main job on the digits, the pipeline commands, and hub round trips of the trained pipeline.

The main job (tiny recipes, `accelerate launch` per stage) runs once for the module; its
pipeline is then generated from, reassembled, pushed and loaded back.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from conftest import TINY_PRIOR, TINY_TOKENIZER, run_module
from hubserver import LocalHub, client
from pipelines import Pipeline
from pipelines.cli import assemble_main, generate_main

STEPS = "train.max_steps=20"


def main_job(out: Path, data: Path) -> subprocess.CompletedProcess:
    return run_module(["-m", "pipelines.main_job", "--output-dir", str(out), "--data", str(data),
                       "--tokenizer-override", *TINY_TOKENIZER, STEPS, "--prior-override", *TINY_PRIOR, STEPS])


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, digits_parquet):
    out = tmp_path_factory.mktemp("main")
    return out, main_job(out, digits_parquet)


def digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


SAMPLE = dict(class_labels=["3", 7, "1", 0], seed=5, output_type="np", progress=False)


# ------------------------------------------------------------------------------------------ the main job


def test_main_job_produces_every_artefact(main_run):
    out, result = main_run
    assert "accelerate.commands.launch --num_processes 1" in result.stdout
    for stage in ("tokenizer", "prior"):
        final = out / stage / "final"
        assert (final / "model.safetensors").is_file() and (final / "eval_metrics.json").is_file()
        assert json.loads((out / stage / "run_info.json").read_text())["num_processes"] == 1
    assert (out / "token_cache").is_dir()
    pipeline = out / "pipeline"
    assert {"pipeline.json", "tokenizer", "prior", "README.md", "samples.png"} <= {p.name for p in pipeline.iterdir()}
    with PIL.Image.open(out / "class_grid.png") as grid:
        assert grid.size == (2 + 10 * 10, 2 + 10 * 10)                    # 10 classes x 10 samples of 8x8
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tokenizer"]["step"] == 20 and metrics["tokenizer"]["psnr"] > 10
    assert metrics["prior"]["bits_per_token"] < metrics["prior"]["uniform_bits_per_token"]
    assert metrics["pipeline"] is None
    assert '"bits_per_token"' in result.stdout and '"psnr"' in result.stdout
    pipe = Pipeline.from_pretrained(pipeline)
    assert pipe.class_names == [str(i) for i in range(10)] and pipe.grid == (4, 4) and pipe.codebook_size == 32
    assert pipe.datasets == []                                             # local data: no hub dataset id


def test_main_job_rerun_skips_finished_stages(main_run, digits_parquet):
    out, _ = main_run
    files = [out / s / "final" / "model.safetensors" for s in ("tokenizer", "prior")]
    files += [out / "pipeline" / "pipeline.json", out / "class_grid.png"]
    stamps = [f.stat().st_mtime_ns for f in files]
    result = main_job(out, digits_parquet)
    assert "tokenizer: " in result.stdout and "prior: " in result.stdout
    assert result.stdout.count("is complete, skipping") == 2 and result.stdout.count("is up to date, skipping") == 2
    assert "accelerate.commands.launch" not in result.stdout
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert '"bits_per_token"' in result.stdout                            # the metrics are printed again


def test_main_job_evaluation_hook(main_run, digits_parquet, monkeypatch, capsys):
    """`evaluate_pipeline`'s report lands in the pipeline's card and in metrics.json, and is not redone."""
    from pipelines import main_job

    out, _ = main_run
    calls = []

    def evaluate(pipeline_dir, output_dir, seed=0, **settings):
        calls.append((pipeline_dir, output_dir, seed))
        return {"fid": {"value": 99.5, "feature_network": "test features", "n": 10}}

    monkeypatch.setattr(main_job, "evaluate_pipeline", evaluate)
    argv = ["--output-dir", str(out), "--data", str(digits_parquet), "--seed", "4"]
    metrics = main_job.main(argv)
    assert calls == [(out / "pipeline", out, 4)]
    assert metrics["pipeline"]["fid"]["value"] == 99.5
    assert json.loads((out / "metrics.json").read_text())["pipeline"]["fid"]["value"] == 99.5
    assert "| fid | 99.5 | test features | 10 |" in (out / "pipeline" / "README.md").read_text()
    assert main_job.main(argv)["pipeline"]["fid"]["value"] == 99.5 and len(calls) == 1
    assert "evaluation: " in capsys.readouterr().out


def test_an_interrupted_stage_resumes_and_a_finished_one_is_skipped(tmp_path, monkeypatch, capsys):
    """The stage launcher: `resume=latest` after a checkpoint, skipping once `final/` is complete,
    a clear error when the training process fails (the process itself is faked here)."""
    from pipelines import main_job

    run = tmp_path / "prior"
    checkpoint = run / "checkpoints" / "step-0000040"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step-0000040\n")
    calls = []

    def finishing_run(cmd, env):
        calls.append((cmd, env))
        (run / "final").mkdir()
        for name in ("config.json", "model.safetensors", "eval_metrics.json"):
            (run / "final" / name).write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(main_job.subprocess, "run", finishing_run)
    stage = ("prior", "stage2_prior.train", Path("recipe.yaml"), run, ["a.b=1"], "--multi_gpu --num_processes 2")
    assert main_job.run_stage(*stage)
    (cmd, env), = calls
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "-m", "stage2_prior.train", "--config", "recipe.yaml", f"output_dir={run}", "resume=latest",
                   "a.b=1"]
    assert env["ACCELERATE_USE_CPU"] == "1"                               # no GPU here: CPU processes cooperate
    assert f"prior: resuming from {checkpoint}" in capsys.readouterr().out
    assert not main_job.run_stage(*stage) and len(calls) == 1              # complete: skipped
    assert "is complete, skipping" in capsys.readouterr().out

    (run / "final" / "eval_metrics.json").unlink()                         # killed before its last write
    monkeypatch.setattr(main_job.subprocess, "run", lambda cmd, env: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(main_job.StageFailed, match="the prior stage failed .exit code 1.*resumes from its last"):
        main_job.run_stage(*stage)


def test_main_job_rejects_overrides_it_owns(tmp_path, capsys):
    from pipelines import main_job

    with pytest.raises(SystemExit):
        main_job.main(["--output-dir", str(tmp_path), "--prior-override", "tokenizer=elsewhere"])
    assert "tokenizer is set by the main job" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_job.main(["--output-dir", str(tmp_path), "--tokenizer-override", "train.lr"])
    assert "is not of the form key=value" in capsys.readouterr().err
    assert not (tmp_path / "tokenizer").exists()


# ------------------------------------------------------------------------------------------ commands


def test_generate_command(main_run, tmp_path, capsys):
    out, _ = main_run
    pipeline = out / "pipeline"
    run_module(["-m", "pipelines.cli", "generate", str(pipeline), "--class-labels", "3", "7", "1", "0",
                "--seed", "5", "--output-dir", str(tmp_path / "pngs"), "--no-progress"])
    files = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert files == ["00000_3.png", "00001_7.png", "00002_1.png", "00003_0.png"]
    expected = Pipeline.from_pretrained(pipeline).generate(**{**SAMPLE, "output_type": "pil"})
    for name, image in zip(files, expected):
        with PIL.Image.open(tmp_path / "pngs" / name) as written:
            assert written.mode == "L" and np.array_equal(np.asarray(written), np.asarray(image))
    generate_main([str(pipeline), "--per-class", "3", "--class-labels", "2", "9", "--guidance-scale", "3",
                   "--output", str(tmp_path / "grid.png"), "--no-progress"])
    with PIL.Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (2 + 3 * 10, 2 + 2 * 10)                      # 2 classes x 3 samples
    for bad, words in [(["--class-labels", "zebra"], "unknown class name 'zebra'"),
                       (["--class-labels", "12"], r"class labels must lie in [0, 10)")]:
        with pytest.raises(SystemExit) as info:
            generate_main([str(pipeline), *bad, "--output", str(tmp_path / "x.png"), "--no-progress"])
        assert info.value.code == 2 and words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generate_main([str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.png")])
    assert "is not a directory" in capsys.readouterr().err


def test_assemble_command(main_run, tmp_path, capsys):
    out, _ = main_run
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"fid": {"value": 41.5, "feature_network": "inception-v3", "n": 297}}))
    assemble_main(["--tokenizer", str(out / "tokenizer" / "final"), "--prior", str(out / "prior" / "final"),
                   "--output", str(tmp_path / "pipe"), "--eval-report", str(report)])
    card = (tmp_path / "pipe" / "README.md").read_text()
    assert "| fid | 41.5 | inception-v3 | 297 |" in card and "![samples](samples.png)" in card
    a = Pipeline.from_pretrained(tmp_path / "pipe").generate(**SAMPLE)
    assert np.array_equal(a, Pipeline.from_pretrained(out / "pipeline").generate(**SAMPLE))
    # a tokenizer of another grid does not fit the prior
    from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig

    other = ImageTokenizer(ImageTokenizerConfig(image_size=8, base_channels=8, channel_mult=[1, 2, 2],
                                                num_downsamples=2, latent_channels=8, codebook_size=32))
    other.save_pretrained(tmp_path / "other_tok")
    with pytest.raises(SystemExit):
        assemble_main(["--tokenizer", str(tmp_path / "other_tok"), "--prior", str(out / "prior" / "final"),
                       "--output", str(tmp_path / "bad")])
    assert "the tokenizer has 32 codes and a 2x2 grid but the prior expects 32 codes on a 4x4 grid" \
        in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------ hub


def test_push_and_load_from_the_hub(main_run, tmp_path):
    out, _ = main_run
    local = out / "pipeline"
    expected = digest(Pipeline.from_pretrained(local).generate(**SAMPLE))
    with LocalHub(tmp_path / "hub") as hub:
        pushed = client(hub, tmp_path / "home_push", f"""
            from huggingface_hub import HfApi
            from pipelines import Pipeline
            from trainkit.hub import push_main
            url = Pipeline.from_pretrained("{local}").push_to_hub("user/digits-pipe", commit_message="first")
            print("URL", url)
            push_main(["{local}", "user/digits-dir"])                          # imagegen-push of the directory
            push_main(["{local / 'tokenizer'}", "user/just-a-tokenizer"])
            api = HfApi()
            for repo in ("user/digits-pipe", "user/digits-dir"):
                print("COMMITS", repo, [c.title for c in api.list_repo_commits(repo)])
                print("FILES", repo, sorted(api.list_repo_files(repo)))
        """)
        assert "URL" in pushed and "user/digits-pipe" in pushed
        assert "COMMITS user/digits-pipe ['first', 'initial commit']" in pushed      # one commit on top of the
        assert "COMMITS user/digits-dir ['Upload pipeline', 'initial commit']" in pushed   # repo's creation
        for repo in ("user/digits-pipe", "user/digits-dir"):
            files = [line for line in pushed.splitlines() if line.startswith(f"FILES {repo}")][0]
            for name in ("pipeline.json", "README.md", "samples.png", "tokenizer/model.safetensors",
                         "prior/model.safetensors", "prior/token_layout.json"):
                assert f"'{name}'" in files
        load = f"""
            import hashlib, numpy as np
            from pipelines import Pipeline
            from trainkit.hub import CheckpointError
            for repo in ("user/digits-pipe", "user/digits-dir"):
                images = np.ascontiguousarray(Pipeline.from_pretrained(repo).generate(**{SAMPLE!r}), dtype=np.float32)
                print("DIGEST", repo, hashlib.sha256(images.tobytes()).hexdigest())
            try:
                Pipeline.from_pretrained("user/nothing")
            except FileNotFoundError as err:
                print("MISSING", err)
            try:
                Pipeline.from_pretrained("user/just-a-tokenizer")
            except CheckpointError as err:
                print("NOT A PIPELINE", err)
            from huggingface_hub import hf_hub_download
            print(open(hf_hub_download("user/digits-pipe", "README.md")).read())
        """
        fresh = client(hub, tmp_path / "home_load", load)         # a fresh process with an empty cache
        assert f"DIGEST user/digits-pipe {expected}" in fresh and f"DIGEST user/digits-dir {expected}" in fresh
        assert "MISSING 'user/nothing' is neither a local directory nor a hub repo" in fresh
        assert "NOT A PIPELINE" in fresh and "has no pipeline.json" in fresh
        assert 'Pipeline.from_pretrained("user/digits-pipe")' in fresh and "library_name: discrete-imagegen" in fresh
        # offline, the cache alone serves the pipelines: the hub sees no request
        served = len(hub.requests)
        offline = client(hub, tmp_path / "home_load", load, HF_HUB_OFFLINE="1")
        assert len(hub.requests) == served
    assert f"DIGEST user/digits-pipe {expected}" in offline and f"DIGEST user/digits-dir {expected}" in offline
    assert "MISSING 'user/nothing' is not a local directory, and as a hub repo id it is not in the local cache" \
        in offline
