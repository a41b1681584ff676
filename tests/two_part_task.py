"""A task with two optimised parts, run by `accelerate launch` in the two-process trainer test.

The model regresses y = x @ w; a critic with its own optimizer learns to map the model's
(detached) predictions to y. The model's loss also reads the critic (through the unwrapped
module), a term whose gradient must not reach the critic. Each process writes its weights.

    accelerate launch ... tests/two_part_task.py OUTPUT_DIR
"""

import sys
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

from trainkit.trainer import Part, TrainConfig, Trainer, TrainTask


class TwoParts(TrainTask):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, 4, generator=g)
        self.train_dataset = TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]))
        self.val_dataset = None
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 1)
        self.critic = torch.nn.Linear(1, 1)

    def extra_parts(self):
        return [Part("critic", self.critic, lr=0.05, warmup_steps=2, start_step=5)]

    def training_step(self, model, batch, step, critic):
        x, y = batch
        pred = model(x)
        adversarial = extract_model_from_parallel(critic)(pred).mean()
        model_loss = torch.nn.functional.mse_loss(pred.squeeze(1), y) + 0.01 * adversarial
        critic_loss = torch.nn.functional.mse_loss(critic(pred.detach()).squeeze(1), y)
        return {"model": model_loss, "critic": critic_loss}, {}

    def save_final(self, model, directory):
        directory.mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    cfg = TrainConfig(batch_size=16, lr=0.05, warmup_steps=2, max_steps=20, log_every=5, checkpoint_every=10,
                      progress_bar=False, mixed_precision="no", num_threads=1)
    task = TwoParts()
    trainer = Trainer(task, cfg, out)
    trainer.fit()
    rank = trainer.accelerator.process_index
    weights = {f"model.{k}": v for k, v in task.model.state_dict().items()}
    weights.update({f"critic.{k}": v for k, v in task.critic.state_dict().items()})
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"rank{rank}.safetensors"))
