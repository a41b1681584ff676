"""The main job on the digits, the pipeline commands, and hub round trips of the trained pipeline.

The main job (tiny recipes, `accelerate launch` per stage) runs once for the module; its
pipeline is then generated from, reassembled, pushed and loaded back.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from conftest import TINY_PRIOR, TINY_TOKENIZER, run_module
from hubserver import LocalHub, client
from pipelines import Pipeline
from commands.pipeline_cli import assemble_main, generate_main

STEPS = "train.max_steps=20"


def job_args(out: Path, data: Path, tokenizer: tuple[str, ...] = (), prior: tuple[str, ...] = ()) -> list[str]:
    return ["--output-dir", str(out), "--data", str(data), "--tokenizer-override", *TINY_TOKENIZER, STEPS,
            *tokenizer, "--prior-override", *TINY_PRIOR, STEPS, *prior]


def main_job(out: Path, data: Path, *extra: str, check: bool = True, **changed) -> subprocess.CompletedProcess:
    return run_module(["-m", "commands.main_job", *job_args(out, data, **changed), *extra], check=check)


def copy_run(main_run, tmp_path: Path) -> Path:
    """A copy of the module's finished main job, to rerun with other settings."""
    out = tmp_path / "main"
    shutil.copytree(main_run[0], out)
    return out


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
    from commands import main_job

    out, _ = main_run
    calls = []

    def evaluate(pipeline_dir, output_dir, seed=0, **settings):
        calls.append((pipeline_dir, output_dir, seed))
        return {"fid": {"value": 99.5, "feature_network": "test features", "n": 10}}

    monkeypatch.setattr(main_job, "evaluate_pipeline", evaluate)
    argv = [*job_args(out, digits_parquet), "--seed", "4"]
    metrics = main_job.main(argv)
    assert calls == [(out / "pipeline", out, 4)]
    assert metrics["pipeline"]["fid"]["value"] == 99.5
    assert json.loads((out / "metrics.json").read_text())["pipeline"]["fid"]["value"] == 99.5
    assert "| fid | 99.5 | test features | 10 |" in (out / "pipeline" / "README.md").read_text()
    assert main_job.main(argv)["pipeline"]["fid"]["value"] == 99.5 and len(calls) == 1
    assert "evaluation: " in capsys.readouterr().out
    main_job.main([*argv, "--eval-samples", "100"])                       # other settings: evaluated again
    assert len(calls) == 2


def test_an_interrupted_stage_resumes_and_a_finished_one_is_skipped(tmp_path, monkeypatch, capsys):
    """The stage launcher: `resume=latest` after a checkpoint, skipping once `final/` is complete,
    a clear error when the training process fails (the process itself is faked here)."""
    from commands import main_job

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


def test_a_changed_override_stops_the_rerun_and_names_the_change(main_run, digits_parquet, tmp_path):
    out = copy_run(main_run, tmp_path)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    stamps = [f.stat().st_mtime_ns for f in files]
    result = main_job(out, digits_parquet, check=False, tokenizer=("model.codebook_size=16",))
    assert result.returncode != 0 and "accelerate.commands.launch" not in result.stdout
    assert f"the tokenizer stage in {out / 'tokenizer'} was trained with other settings" in result.stderr
    assert "model.codebook_size: 32 -> 16" in result.stderr
    assert "--output-dir" in result.stderr and "--retrain-changed" in result.stderr
    assert sorted(p for p in out.rglob("*") if p.is_file()) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # a recipe file that changed is a change too, as is the tokenizer the prior was trained on
    recipe = tmp_path / "prior.yaml"
    recipe.write_text(main_job_recipe("prior").read_text().replace("weight_decay: 0.05", "weight_decay: 0.5"))
    result = main_job(out, digits_parquet, "--prior-config", str(recipe), check=False)
    assert "the prior stage" in result.stderr and "train.weight_decay: 0.05 -> 0.5" in result.stderr
    (out / "prior" / "main_job_inputs.json").write_text('{"tokenizer weights (sha256)": "another"}')
    result = main_job(out, digits_parquet, check=False)
    assert 'tokenizer weights (sha256): "another" -> "' in result.stderr


def main_job_recipe(stage: str) -> Path:
    from commands import main_job

    return main_job.DEFAULT_TOKENIZER_CONFIG if stage == "tokenizer" else main_job.DEFAULT_PRIOR_CONFIG


def test_retrain_changed_replaces_the_stale_stage_and_everything_above(main_run, digits_parquet, tmp_path):
    out = copy_run(main_run, tmp_path)
    tokenizer_weights = (out / "tokenizer" / "final" / "model.safetensors").read_bytes()
    old_prior = (out / "prior" / "final" / "model.safetensors").read_bytes()
    result = main_job(out, digits_parquet, "--retrain-changed", prior=("train.max_steps=10",))
    assert "tokenizer: " in result.stdout and result.stdout.count("accelerate.commands.launch") == 1
    assert "-m stage2_prior.train" in result.stdout and "train.max_steps: 20 -> 10" in result.stdout
    assert json.loads((out / "prior" / "final" / "eval_metrics.json").read_text())["step"] == 10
    assert (out / "tokenizer" / "final" / "model.safetensors").read_bytes() == tokenizer_weights
    replaced, = (out / "replaced").iterdir()
    assert {p.name for p in replaced.iterdir()} >= {"prior", "pipeline", "class_grid.png"}
    assert (replaced / "prior" / "final" / "model.safetensors").read_bytes() == old_prior
    assert "pipeline: saved to" in result.stdout and "class grid: " in result.stdout
    again = main_job(out, digits_parquet, prior=("train.max_steps=10",))       # now unchanged: all reused
    assert again.stdout.count("is complete, skipping") == 2 and again.stdout.count("is up to date, skipping") == 2


def test_new_sampling_defaults_reassemble_the_pipeline_without_retraining(main_run, digits_parquet, tmp_path,
                                                                          capsys):
    from commands import main_job

    out = copy_run(main_run, tmp_path)
    weights = (out / "prior" / "final" / "model.safetensors").read_bytes()
    changed = [*job_args(out, digits_parquet, prior=("sampling.temperature=0.7", "sampling.top_k=5")),
               "--eval-samples", "0"]
    main_job.main(changed)
    printed = capsys.readouterr().out
    assert printed.count("is complete, skipping") == 2 and "-m stage2_prior.train" not in printed
    assert f"pipeline: saved to {out / 'pipeline'}" in printed and "class grid: " + str(out) in printed
    assert (out / "prior" / "final" / "model.safetensors").read_bytes() == weights
    stored = Pipeline.from_pretrained(out / "pipeline").sampling_defaults
    assert (stored.temperature, stored.top_k) == (0.7, 5)
    assert json.loads((out / "pipeline_inputs.json").read_text())["sampling"]["temperature"] == 0.7
    main_job.main(changed)
    assert f"pipeline: {out / 'pipeline'} is up to date" in capsys.readouterr().out


def test_a_new_seed_redraws_the_class_grid_only(main_run, digits_parquet, tmp_path, capsys):
    from commands import main_job

    out = copy_run(main_run, tmp_path)
    grid, manifest = out / "class_grid.png", out / "pipeline" / "pipeline.json"
    before = grid.read_bytes(), manifest.stat().st_mtime_ns
    main_job.main([*job_args(out, digits_parquet), "--seed", "7", "--eval-samples", "0"])
    printed = capsys.readouterr().out
    assert "pipeline: " in printed and f"pipeline: {out / 'pipeline'} is up to date" in printed
    assert "class grid: " in printed and "class grid: " + str(grid) + " is up to date" not in printed
    assert grid.read_bytes() != before[0] and manifest.stat().st_mtime_ns == before[1]
    assert json.loads((out / "class_grid.json").read_text())["seed"] == 7
    main_job.main([*job_args(out, digits_parquet), "--seed", "7", "--eval-samples", "0"])
    assert f"class grid: {grid} is up to date" in capsys.readouterr().out


def test_a_killed_stage_resumes_only_with_its_own_settings(tmp_path, monkeypatch, capsys):
    """`check_stage` against the trainer's run_config.json: the same settings resume; other
    settings are refused with the changed keys; keys that cannot change the model are ignored."""
    from commands import main_job, reuse
    from stage1_tokenizer.train import TokenizerTrainConfig

    out, run = tmp_path, tmp_path / "tokenizer"
    (run / "checkpoints" / "step-0000020").mkdir(parents=True)
    (run / "checkpoints" / "step-0000020" / "trainer_state.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step-0000020\n")
    recipe, overrides = main_job.DEFAULT_TOKENIZER_CONFIG, ["train.lr=0.003", "model.codebook_size=32"]
    recorded = main_job.resolve_stage_config(TokenizerTrainConfig, recipe, main_job.stage_arguments(run, overrides))
    recorded["model"]["image_size"] = 8                                  # set from the data by the trainer
    (run / "run_config.json").write_text(json.dumps(recorded))
    ignore = (*reuse.IGNORED_KEYS, *main_job.TOKENIZER_DERIVED_KEYS)

    def check(*extra: str, replace: bool = False) -> None:
        wanted = main_job.resolve_stage_config(TokenizerTrainConfig, recipe,
                                               main_job.stage_arguments(run, [*overrides, *extra]))
        main_job.check_stage("tokenizer", run, wanted, {}, ignore, out, replace, [out / "prior"], TokenizerTrainConfig)

    check("train.progress_bar=false", "train.log_every=1")                # nothing that matters changed
    calls = []
    monkeypatch.setattr(main_job.subprocess, "run", lambda cmd, env: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(main_job.StageFailed):
        main_job.run_stage("tokenizer", "stage1_tokenizer.train", recipe, run, overrides, "")
    assert "resume=latest" in calls[0] and "tokenizer: resuming from" in capsys.readouterr().out
    with pytest.raises(main_job.StageChanged) as info:
        check("train.lr=0.001", "train.max_steps=1500")
    steps = recorded["train"]["max_steps"]                                # the recipe's
    assert "train.lr: 0.003 -> 0.001" in str(info.value) and f"train.max_steps: {steps} -> 1500" in str(info.value)
    assert "model.image_size" not in str(info.value) and "--retrain-changed" in str(info.value)
    del recorded["train"]["optimizer"]                                   # a run from before the setting existed:
    (run / "run_config.json").write_text(json.dumps(recorded))
    check()                                                               # its default is what that run did
    with pytest.raises(main_job.StageChanged, match=r'train.optimizer: "\(absent\)" -> "muon"'):
        check("train.optimizer=muon")
    check("train.lr=0.001", replace=True)                                 # moved aside: a fresh start
    assert not run.exists() and list((out / "replaced").glob("*/tokenizer/checkpoints/latest"))


def test_main_job_rejects_overrides_it_owns(tmp_path, capsys):
    from commands import main_job

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
    run_module(["-m", "commands.pipeline_cli", "generate", str(pipeline), "--class-labels", "3", "7", "1", "0",
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
            from commands.push import push_main
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
            from trainkit.files import CheckpointError
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


def test_stage_budgets_are_steps_with_an_optional_wall_clock_cap(tmp_path):
    from commands.main_job import JobPaths, parse_args, stage_overrides
    from stage1_tokenizer.train import TokenizerTrainConfig
    from trainkit.config import load_config

    args = parse_args(["--output-dir", str(tmp_path), "--tokenizer-steps", "300", "--prior-minutes", "2.5"])
    tokenizer, prior = stage_overrides(args, JobPaths.under(tmp_path))
    assert "train.max_steps=300" in tokenizer and not any("max_minutes" in o for o in tokenizer)
    assert "train.max_minutes=2.5" in prior and not any("max_steps" in o for o in prior)
    recipe = load_config(TokenizerTrainConfig, str(args.tokenizer_config), [])
    assert recipe.train.max_minutes is None and recipe.train.max_steps > 0   # the recipe's budget is its steps
    with pytest.raises(SystemExit):
        parse_args(["--prior-steps", "0"])


def test_another_tokenizer_budget_scales_the_discriminator_schedule(tmp_path):
    from commands.main_job import JobPaths, parse_args, stage_overrides

    paths = JobPaths.under(tmp_path)
    tokenizer, _ = stage_overrides(parse_args(["--tokenizer-steps", "300"]), paths)
    assert tokenizer[-2:] == ["adversarial.start_step=120", "adversarial.ramp_steps=60"]   # 400 / 200 of 1,000
    tokenizer, _ = stage_overrides(parse_args(["--recipe", "long", "--tokenizer-steps", "1000"]), paths)
    assert tokenizer[-2:] == ["adversarial.start_step=400", "adversarial.ramp_steps=200"]  # the main recipe's
    tokenizer, _ = stage_overrides(parse_args(["--tokenizer-steps", "300", "--tokenizer-override",
                                               "adversarial.start_step=50"]), paths)
    assert tokenizer[-1] == "adversarial.start_step=50"                                     # the user's wins
    assert stage_overrides(parse_args([]), paths)[0] == []                                  # the recipe's own


def test_the_long_recipe_pair_and_its_default_output_dir():
    from commands.main_job import parse_args

    args = parse_args(["--recipe", "long"])
    assert args.tokenizer_config.name == "fashion_mnist_vq_long.yaml" and args.tokenizer_config.is_file()
    assert args.prior_config.name == "fashion_mnist_long.yaml" and args.output_dir == "runs/long"
    main = parse_args([])
    assert (main.tokenizer_config.name, main.prior_config.name, main.output_dir) == \
        ("fashion_mnist_vq.yaml", "fashion_mnist.yaml", "runs/main")
    mixed = parse_args(["--recipe", "long", "--prior-config", str(main.prior_config), "--output-dir", "elsewhere"])
    assert (mixed.tokenizer_config, mixed.prior_config, mixed.output_dir) == \
        (args.tokenizer_config, main.prior_config, "elsewhere")
