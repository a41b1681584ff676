"""The shared training loop on a toy regression task, in process."""

import json
import math
import time

import pytest
import torch
from torch.utils.data import TensorDataset

from trainkit import checkpoint as ckpt
from trainkit.files import save_state_dict
from trainkit.devices import resolve_mixed_precision
from trainkit.trainer import (
    Part, RunningMeans, TrainConfig, Trainer, TrainingDiverged, TrainTask, expected_total_steps, lr_factor,
    run_training,
)


class Regression(TrainTask):
    """y = x @ w; optional NaN from `nan_at` on, optional sleep per step."""

    def __init__(self, nan_at=None, sleep=0.0):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(256, 4, generator=g)
        self.train_dataset = TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]))
        self.val_dataset = TensorDataset(x[:64], self.train_dataset.tensors[1][:64])
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.nan_at, self.sleep = nan_at, sleep

    def training_step(self, model, batch, step):
        x, y = batch
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        if self.nan_at is not None and step >= self.nan_at:
            loss = loss * float("nan")
        time.sleep(self.sleep)
        return loss, {}

    def evaluate(self, model, loader, accelerator, step):
        losses = [torch.nn.functional.mse_loss(model(x).squeeze(1), y).item() for x, y in loader]
        return {"mse": sum(losses) / len(losses)}, None

    def save_final(self, model, directory):
        directory.mkdir(parents=True, exist_ok=True)
        save_state_dict(model.state_dict(), directory / "model.safetensors")


class ConvRegression(Regression):
    """A two-layer conv net regressing the image mean; records the weights' memory layout at each step."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(128, 2, 6, 6, generator=g)
        self.train_dataset = TensorDataset(x, x.mean((1, 2, 3)))
        self.val_dataset = TensorDataset(x[:32], self.train_dataset.tensors[1][:32])
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                                         torch.nn.Conv2d(4, 1, 3, padding=1))
        self.channels_last_seen = []

    def training_step(self, model, batch, step):
        x, y = batch
        self.channels_last_seen.append(model[0].weight.is_contiguous(memory_format=torch.channels_last))
        return torch.nn.functional.mse_loss(model(x).mean((1, 2, 3)), y), {}

    def evaluate(self, model, loader, accelerator, step):
        losses = [torch.nn.functional.mse_loss(model(x).mean((1, 2, 3)), y).item() for x, y in loader]
        return {"mse": sum(losses) / len(losses)}, None


def loop(**kw):
    base = dict(batch_size=16, lr=0.3, warmup_steps=2, max_steps=40, log_every=5, eval_every=20,
                checkpoint_every=10, progress_bar=False, mixed_precision="no")
    base.update(kw)
    return TrainConfig(**base)


def test_loss_falls_and_outputs_are_written(tmp_path):
    metrics = run_training(Regression(), loop(), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.1 * losses[0]
    assert metrics["mse"] < 0.1 * losses[0]
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-0000040"


@pytest.mark.parametrize("cuda, cuda_bf16, amx, avx512_bf16, expected", [
    (False, False, True, False, "bf16"), (False, False, False, True, "bf16"), (False, False, False, False, "no"),
    (True, True, False, False, "bf16"), (True, False, True, False, "no"),
])
def test_auto_mixed_precision_picks_bf16_only_where_it_is_fast(monkeypatch, cuda, cuda_bf16, amx, avx512_bf16,
                                                               expected):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("fp16") == "fp16" and resolve_mixed_precision(None) is None
    if cuda:  # `accelerate launch --cpu` on a GPU machine decides by the CPU
        monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
        assert resolve_mixed_precision("auto") == ("bf16" if amx or avx512_bf16 else "no")


def test_auto_mixed_precision_trains(tmp_path):
    from accelerate.state import AcceleratorState

    # accelerate keeps one precision per process: earlier tests trained in fp32, auto may pick bf16
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        run_training(Regression(), loop(mixed_precision="auto", max_steps=10), tmp_path)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["mixed_precision"] == resolve_mixed_precision("auto")


def test_channels_last_trains_checkpoints_and_resumes(tmp_path):
    settings = dict(max_steps=20, lr=0.05, channels_last=True)
    task = ConvRegression()
    run_training(task, loop(**settings), tmp_path / "nhwc")
    assert task.channels_last_seen == [True] * 20
    plain = ConvRegression()
    run_training(plain, loop(**{**settings, "channels_last": False}), tmp_path / "plain")
    assert not any(plain.channels_last_seen)
    final = _weights(tmp_path / "nhwc" / "final" / "model.safetensors")   # safetensors needs contiguous tensors
    for name, value in _weights(tmp_path / "plain" / "final" / "model.safetensors").items():
        assert torch.allclose(final[name], value, atol=1e-5)              # only the memory layout differed

    part = _run_stopped_at(tmp_path / "nhwc", 10, tmp_path / "part")
    resumed = ConvRegression()
    run_training(resumed, loop(**settings), part, resume="latest")
    assert resumed.channels_last_seen == [True] * 10
    for name, value in _weights(part / "final" / "model.safetensors").items():
        assert torch.equal(value, final[name])


def test_nan_loss_stops_before_the_bad_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(Regression(nan_at=13), loop(), tmp_path)
    with pytest.raises(TrainingDiverged, match="step 13 .*last good checkpoint"):
        trainer.fit()
    assert trainer.state.step == 13
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())   # the NaN step was not applied
    assert ckpt.find_checkpoint(tmp_path, "latest").name == "step-0000010"
    assert not (tmp_path / "final").exists()


def test_the_first_step_runs_at_the_first_warm_up_rate(tmp_path):
    # AdamW's first update moves every weight by lr (its normalised first moment is +-1), so the
    # weights after one step show the rate that step actually used.
    before = {k: v.clone() for k, v in Regression().model.state_dict().items()}
    run_training(Regression(), loop(lr=0.3, warmup_steps=10, max_steps=1, log_every=1), tmp_path)
    after = _weights(ckpt.step_dir(tmp_path / "checkpoints", 1) / "model.safetensors")
    for name, value in before.items():
        torch.testing.assert_close((after[name] - value).abs(), torch.full_like(value, 0.03), rtol=1e-4, atol=0)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train/lr"] == pytest.approx(0.03)   # the logged rate is the one used


def test_progress_bar_counts_to_the_step_that_will_end_the_run(tmp_path):
    cfg = loop(max_steps=1000, max_minutes=1.0)
    assert expected_total_steps(0, 0.0, cfg) == 1000
    assert expected_total_steps(10, 6.0, cfg) == 100          # 10 steps in 6 s: the 60 s cap ends it at 100
    assert expected_total_steps(10, 0.1, cfg) == 1000         # fast enough for the step budget
    assert expected_total_steps(10, 6.0, loop(max_steps=1000)) == 1000

    trainer = Trainer(Regression(sleep=0.05), loop(max_steps=100_000, max_minutes=1.0 / 60, checkpoint_every=1000),
                      tmp_path)
    trainer.fit()
    assert trainer.state.step <= trainer.bar.total <= 1.5 * trainer.state.step


def test_wall_clock_budget_stops_the_run_and_anneals_lr(tmp_path):
    start = time.monotonic()
    run_training(Regression(sleep=0.05), loop(max_steps=100_000, max_minutes=1.5 / 60, checkpoint_every=1000),
                 tmp_path)
    assert time.monotonic() - start < 30
    state = ckpt.TrainerState.load(ckpt.find_checkpoint(tmp_path, "latest"))
    assert 5 < state.step < 100 and state.elapsed_seconds >= 1.5
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["train/lr"] for r in rows if "train/lr" in r]
    assert lrs[-1] < 0.5 * max(lrs)  # the cosine follows the time budget, not the step budget


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    run_training(Regression(), loop(grad_accum_steps=4, max_steps=6, checkpoint_every=1000), tmp_path)
    state = ckpt.TrainerState.load(ckpt.find_checkpoint(tmp_path, "latest"))
    assert state.step == 6 and state.samples_seen == 6 * 4 * 16


def test_lr_schedule():
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0.0, 0, cfg) == pytest.approx(0.1)
    assert lr_factor(0.0, 9, cfg) == pytest.approx(1.0)
    assert lr_factor(0.5, 100, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(1.0, 100, cfg) == pytest.approx(0.1)
    assert lr_factor(0.25, 100, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    good = ckpt.step_dir(checkpoints, 10)
    good.mkdir(parents=True)
    ckpt.TrainerState(step=10).save(good)
    ckpt.step_dir(checkpoints, 20).mkdir()            # a directory without its trainer state
    ckpt.temp_dir(checkpoints, 30).mkdir()            # a save killed half way
    (checkpoints / "latest").write_text("step-0000020\n")
    assert ckpt.find_checkpoint(tmp_path, "latest") == good
    assert ckpt.find_checkpoint(tmp_path / "elsewhere", "latest") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        ckpt.find_checkpoint(tmp_path, str(ckpt.step_dir(checkpoints, 20)))


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    from trainkit.files import CheckpointError

    run_training(Regression(), loop(max_steps=20), tmp_path)
    weights = ckpt.step_dir(tmp_path / "checkpoints", 20) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="cannot resume from .*step-0000020"):
        run_training(Regression(), loop(max_steps=40), tmp_path, resume="latest")


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def _run_stopped_at(run, step, directory):
    """A new run directory holding only `run`'s checkpoint of `step`, as `latest`: what a run
    killed after that checkpoint leaves behind."""
    import shutil

    source = ckpt.step_dir(run / "checkpoints", step)
    shutil.copytree(source, ckpt.step_dir(directory / "checkpoints", step))
    (directory / "checkpoints" / "latest").write_text(source.name + "\n")
    return directory


def test_weight_ema_is_evaluated_saved_and_resumed_exactly(tmp_path):
    full = tmp_path / "full"
    run_training(Regression(), loop(max_steps=20, ema_decay=0.9), full)
    step20 = ckpt.step_dir(full / "checkpoints", 20)
    final, live = _weights(full / "final" / "model.safetensors"), _weights(step20 / "model.safetensors")
    averaged = _weights(step20 / "ema.safetensors")
    assert averaged["n_averaged"].item() == 20
    for name, value in final.items():
        assert torch.equal(value, averaged[f"module.{name}"])   # the final model is the average ...
    assert not torch.allclose(final["weight"], live["weight"])   # ... not the last weights

    # Resume from step 10 in a fresh output dir: the average continues exactly.
    part = _run_stopped_at(full, 10, tmp_path / "part")
    run_training(Regression(), loop(max_steps=20, ema_decay=0.9), part, resume="latest")
    for name, value in _weights(part / "final" / "model.safetensors").items():
        assert torch.equal(value, final[name])


def test_weight_ema_averages_only_what_the_optimizer_trains():
    from trainkit.ema import WeightEMA

    live = torch.nn.Linear(2, 2)
    live.bias.requires_grad_(False)            # kept by its own rule, as an EMA codebook is
    ema = WeightEMA(live, decay=0.5)
    with torch.no_grad():
        live.weight.fill_(0.0), live.bias.fill_(0.0)
    ema.update(live)                           # the first update copies
    with torch.no_grad():
        live.weight.fill_(2.0), live.bias.fill_(4.0)
    ema.update(live)
    averaged = ema.module(live)
    assert torch.allclose(averaged.weight, torch.full((2, 2), 1.0))   # 0.5 * 0 + 0.5 * 2
    assert torch.equal(averaged.bias, live.bias)                       # the live value, not 2.0


def test_weight_ema_settings_are_checked(tmp_path):
    from trainkit.files import CheckpointError

    with pytest.raises(ValueError, match="ema_decay must be in"):
        loop(ema_decay=1.5)
    run_training(Regression(), loop(max_steps=10), tmp_path)          # a run without the average
    with pytest.raises(CheckpointError, match="ema.safetensors"):
        run_training(Regression(), loop(max_steps=20, ema_decay=0.99), tmp_path, resume="latest")


class Adversary(Regression):
    """The regression plus a one-weight critic with its own optimizer, from step 3 on. The model's
    loss reads the critic (a term that would push the critic's weight down); the critic's own
    loss pulls its weight up towards 1."""

    def __init__(self):
        super().__init__()
        self.critic = torch.nn.Linear(1, 1, bias=False)
        torch.nn.init.zeros_(self.critic.weight)

    def extra_parts(self):
        return [Part("critic", self.critic, lr=0.01, warmup_steps=1, start_step=3)]

    def training_step(self, model, batch, step, critic):
        from accelerate.utils import extract_model_from_parallel

        x, y = batch
        one = torch.ones(1, 1)
        model_loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y) + 1000 * extract_model_from_parallel(critic)(one).sum()
        critic_loss = (critic(one) - 1).pow(2).sum()
        return {"model": model_loss, "critic": critic_loss}, {"critic_weight": critic.weight.detach()[0, 0]}


def test_a_second_part_has_its_own_optimizer_schedule_and_exact_resume(tmp_path):
    settings = dict(max_steps=6, checkpoint_every=1, keep_checkpoints=10, log_every=1)
    full = tmp_path / "full"
    run_training(Adversary(), loop(**settings), full)
    critic = [_weights(ckpt.step_dir(full / "checkpoints", s) / "model_1.safetensors")["weight"].item()
              for s in range(1, 7)]
    assert critic[:3] == [0.0, 0.0, 0.0]                         # not trained before its start step
    first = 0.01 * lr_factor(3 / 6, 0, loop(), warmup_steps=1)   # its own lr, warm-up from its start
    assert critic[3] == pytest.approx(first, rel=1e-4)           # up: the model's loss did not reach it
    assert critic[5] > critic[4] > critic[3]
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert rows[3]["train/critic_weight"] == 0.0 and rows[4]["train/critic_weight"] == pytest.approx(first, rel=1e-4)
    assert all("train/critic_loss" in r for r in rows[:6])

    part = _run_stopped_at(full, 4, tmp_path / "part")
    run_training(Adversary(), loop(**settings), part, resume="latest")
    for name in ("model.safetensors", "model_1.safetensors"):
        expected = _weights(ckpt.step_dir(full / "checkpoints", 6) / name)
        for key, value in _weights(ckpt.step_dir(part / "checkpoints", 6) / name).items():
            assert torch.equal(value, expected[key]), (name, key)


class MLPRegression(Regression):
    """Regression through one hidden matrix, the one `train.optimizer=muon` trains with Muon."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                                         torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def hidden_matrices(self, module):
        return [module[2].weight]


def test_muon_trains_the_hidden_matrices_and_resumes_exactly(tmp_path):
    full = tmp_path / "full"
    run_training(MLPRegression(), loop(max_steps=20, lr=0.1, optimizer="muon"), full)
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < 0.5 * losses[0]
    state = torch.load(ckpt.step_dir(full / "checkpoints", 10) / "optimizer.bin", weights_only=True)
    muon, adamw = state["muon"]["state"], state["adamw"]["state"]
    assert [sorted(s) for s in muon.values()] == [["momentum_buffer"]]     # the one hidden matrix
    assert len(adamw) == 5 and all("exp_avg_sq" in s for s in adamw.values())   # the other weights and biases
    adam_only = tmp_path / "adamw"
    run_training(MLPRegression(), loop(max_steps=20, lr=0.1), adam_only)
    assert not torch.equal(_weights(adam_only / "final" / "model.safetensors")["2.weight"],
                           _weights(full / "final" / "model.safetensors")["2.weight"])

    part = _run_stopped_at(full, 10, tmp_path / "part")
    run_training(MLPRegression(), loop(max_steps=20, lr=0.1, optimizer="muon"), part, resume="latest")
    for name, value in _weights(part / "final" / "model.safetensors").items():
        assert torch.equal(value, _weights(full / "final" / "model.safetensors")[name]), name

    with pytest.raises(ValueError, match="written with another train.optimizer"):
        run_training(MLPRegression(), loop(max_steps=20, lr=0.1, optimizer="muon"), adam_only / "again",
                     resume=str(ckpt.step_dir(adam_only / "checkpoints", 10)))
    with pytest.raises(ValueError, match="names no hidden weight matrices"):
        run_training(Regression(), loop(optimizer="muon"), tmp_path / "none")
    with pytest.raises(ValueError, match="adamw or muon"):
        loop(optimizer="sgd")


class ModuleRecordingMLP(MLPRegression):
    """Records the type of module each training step and each evaluation is handed."""

    def __init__(self):
        super().__init__()
        self.stepped, self.evaluated = set(), set()

    def training_step(self, model, batch, step):
        self.stepped.add(type(model).__name__)
        return super().training_step(model, batch, step)

    def evaluate(self, model, loader, accelerator, step):
        self.evaluated.add(type(model).__name__)
        return super().evaluate(model, loader, accelerator, step)


def test_compiled_steps_train_the_same_model_and_share_its_checkpoints(tmp_path):
    compiled, eager = ModuleRecordingMLP(), ModuleRecordingMLP()
    run_training(compiled, loop(max_steps=20, lr=0.1, compile=True), tmp_path / "compiled")
    run_training(eager, loop(max_steps=20, lr=0.1), tmp_path / "eager")
    assert compiled.stepped == {"OptimizedModule"} and eager.stepped == {"Sequential"}
    assert compiled.evaluated == eager.evaluated == {"Sequential"}       # evaluation runs the model itself
    final = _weights(tmp_path / "compiled" / "final" / "model.safetensors")
    for name, value in _weights(tmp_path / "eager" / "final" / "model.safetensors").items():
        torch.testing.assert_close(final[name], value, atol=1e-5, rtol=1e-4, msg=name)   # same keys, same model

    part = _run_stopped_at(tmp_path / "compiled", 10, tmp_path / "part")             # a compiled run's checkpoint resumes without compile
    run_training(ModuleRecordingMLP(), loop(max_steps=20, lr=0.1), part, resume="latest")
    for name, value in _weights(part / "final" / "model.safetensors").items():
        torch.testing.assert_close(value, final[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="train.compile does not combine with train.shard=fsdp"):
        loop(compile=True, shard="fsdp")


class NextTokenModel(torch.nn.Module):
    """An embedding and a linear head whose forward returns the next-token cross-entropy, as the prior's does."""

    def __init__(self, vocab: int = 32):
        super().__init__()
        self.embed, self.head = torch.nn.Embedding(vocab, 32), torch.nn.Linear(32, vocab)

    def forward(self, ids, targets):
        return torch.nn.functional.cross_entropy(self.head(self.embed(ids)).flatten(0, 1), targets.flatten())


class NextToken(Regression):
    """Next-token prediction on random sequences of 32 tokens, the loss computed inside the (compiled) model."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 32, (256, 17), generator=g)
        self.train_dataset = TensorDataset(ids[:, :-1], ids[:, 1:])
        self.val_dataset = TensorDataset(ids[:64, :-1], ids[:64, 1:])
        torch.manual_seed(0)
        self.model = NextTokenModel()

    def training_step(self, model, batch, step):
        return model(*batch), {}

    def evaluate(self, model, loader, accelerator, step):
        losses = [model(x, y).item() for x, y in loader]
        return {"loss": sum(losses) / len(losses)}, None


def test_compiled_steps_train_the_same_weights_run_after_run(tmp_path):
    threads = torch.get_num_threads()
    finals = []
    try:
        for run in ("first", "second"):   # on 2 threads: on 1 the compiled backward cannot race
            run_training(NextToken(), loop(max_steps=10, lr=0.01, compile=True, num_threads=2), tmp_path / run)
            finals.append(_weights(tmp_path / run / "final" / "model.safetensors"))
    finally:
        torch.set_num_threads(threads)
    assert torch.are_deterministic_algorithms_enabled()
    for name, value in finals[0].items():   # with train.deterministic=false the cross-entropy's compiled
        assert torch.equal(finals[1][name], value), name   # backward adds up in the order its threads race


def test_two_processes_train_both_parts_in_step(tmp_path):
    import sys

    from conftest import REPO, free_port, run_module

    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", str(free_port()), "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no"]
    run_module([str(REPO / "tests" / "two_part_task.py"), str(out)], env={"ACCELERATE_USE_CPU": "1"},
               launcher=launcher)
    assert json.loads((out / "run_info.json").read_text())["num_processes"] == 2
    ranks = [_weights(out / f"rank{r}.safetensors") for r in (0, 1)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name          # the ranks' different shards were averaged
    torch.manual_seed(0)
    torch.nn.Linear(4, 1)
    initial_critic = torch.nn.Linear(1, 1).weight
    assert not torch.equal(ranks[0]["critic.weight"], initial_critic)   # the critic trained too
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] and "train/critic_loss" in rows[-1]


def test_running_means_average_each_scalar_over_the_micro_batches_that_logged_it():
    means = RunningMeans()
    means.add({"loss": 1.0})
    means.add({"loss": torch.tensor(3.0), "critic_loss": torch.tensor(5.0)})   # a part that starts late
    assert means.pop() == {"loss": 2.0, "critic_loss": 5.0}
    assert means.pop() == {}


def test_muon_with_bf16_newton_schulz_is_torchs_muon_and_fp32_stays_close():
    from trainkit.optim import Muon

    torch.manual_seed(0)
    weights = [torch.randn(6, 10), torch.randn(12, 5)]
    runs = {}
    for name, make in [("torch", lambda ps: torch.optim.Muon(ps, lr=0.02, adjust_lr_fn="match_rms_adamw")),
                       ("bf16", lambda ps: Muon(ps, lr=0.02)),
                       ("fp32", lambda ps: Muon(ps, lr=0.02, ns_dtype=torch.float32))]:
        params = [torch.nn.Parameter(w.clone()) for w in weights]
        opt = make(params)
        for step in range(3):
            for p in params:
                p.grad = torch.sin(p.detach() * (step + 1))
            opt.step()
        runs[name] = params
    for ours, theirs in zip(runs["bf16"], runs["torch"]):
        assert torch.equal(ours, theirs)
    for ours, theirs, start in zip(runs["fp32"], runs["torch"], weights):
        assert not torch.equal(ours, theirs)
        torch.testing.assert_close(ours - start, theirs - start, rtol=0.05, atol=0.01)
