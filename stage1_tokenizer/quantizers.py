"""Quantizers: latents `[B, D, h, w]` in, quantized latents, codes `[B, h, w]`, loss, stats out.

Both quantizers share `forward(z, step=None) -> QuantizerOutput` and `embed(codes)`, so the
tokenizer does not care which it holds. Their math runs in float32 even under autocast.
Under DDP every statistic that changes the codebook (EMA counts and sums, k-means init,
dead-code restarts) is reduced or broadcast so that all ranks hold the same codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
import torch.distributed as dist

from .config import ImageTokenizerConfig


@dataclass
class QuantizerOutput:
    quantized: torch.Tensor          # [B, D, h, w], what the decoder reads
    codes: torch.Tensor              # [B, h, w] int64
    loss: torch.Tensor               # weighted quantizer loss (scalar)
    stats: dict[str, torch.Tensor | float] = field(default_factory=dict)   # scalars to log, left on the device


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes in place (no-op in a single process)."""
    if _distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Copy rank `src`'s tensor to every process in place (no-op in a single process)."""
    if _distributed():
        dist.broadcast(tensor, src=src)
    return tensor


def nearest_rows(x: torch.Tensor, codebook: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Index of the nearest row of `codebook [K, D]` (squared Euclidean distance) for each row of `x [N, D]`.

    ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2, and ||x||^2 does not change which code is nearest, so each
    chunk of rows is one fused matrix product `||e||^2 - 2 x e^T` and its argmin.
    """
    code_norms = codebook.pow(2).sum(1)
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk_size):
        scores = torch.addmm(code_norms, x[start:start + chunk_size], codebook.t(), alpha=-2.0)
        out[start:start + chunk_size] = scores.argmin(1)
    return out


def code_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of a code histogram: the effective number of codes in use (a scalar tensor)."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


def perplexity(counts: torch.Tensor) -> float:
    """`code_perplexity` as a Python number."""
    return float(code_perplexity(counts))


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None = None,
           l2: bool = False) -> torch.Tensor:
    """Lloyd k-means on `x [N, D]` with k-means++ seeding; an empty cluster keeps its centre."""
    n = x.shape[0]
    if n < k:  # too few points: repeat them with a little noise
        noise = torch.randn(k - n, x.shape[1], generator=generator).to(x)
        x = torch.cat([x, x[torch.arange(k - n) % n] + 1e-3 * noise])
        n = k
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    closest = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):  # k-means++: next centre drawn with probability ~ squared distance
        weights = closest.cpu().double()
        if float(weights.sum()) <= 0:
            weights = torch.ones(n, dtype=torch.double)
        pick = int(torch.multinomial(weights, 1, generator=generator))
        centres.append(x[pick])
        closest = torch.minimum(closest, (x - x[pick]).pow(2).sum(1))
    centres = torch.stack(centres).clone()
    for _ in range(iters):
        assign = nearest_rows(x, centres)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        if l2:
            centres = F.normalize(centres, dim=1)
    return centres


def rotate_onto(z: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """`q` in the forward pass; backward, the gradient reaches each row of `z` through the rotation
    and rescaling that carry it onto its row of `q`, both held constant (the rotation trick of
    Fifty et al., 2024), instead of the straight-through identity. A code's gradient then turns
    with the angle between the encoder output and its code, so outputs in one code's cell stop
    all moving alike. Rows are vectors: `[N, D]`.
    """
    with torch.no_grad():
        z_norm = z.norm(dim=1, keepdim=True).clamp_min(eps)
        q_norm = q.norm(dim=1, keepdim=True)
        u, v = z / z_norm, q / q_norm.clamp_min(eps)
        r = F.normalize(u + v, dim=1, eps=eps)
        scale = q_norm / z_norm
    # R = I - 2 r r^T + 2 v u^T rotates u onto v in their plane and fixes the rest.
    rotated = z - 2 * r * (r * z).sum(1, keepdim=True) + 2 * v * (u * z).sum(1, keepdim=True)
    carried = scale * rotated
    return carried + (q - carried).detach()


def gumbel_softmax_sample(logits: torch.Tensor, tau: float, hard: bool = False, dim: int = 1) -> torch.Tensor:
    """softmax((logits + g) / tau) with g ~ Gumbel(0, 1) drawn as -log(-log(U)).

    (Drawing U is about twice as fast on a CPU as `F.gumbel_softmax`'s exponential sampler.)
    With `hard`, the forward value is the one-hot argmax and the gradient the soft sample's.
    """
    u = torch.rand_like(logits).clamp_(torch.finfo(logits.dtype).tiny, 1.0 - torch.finfo(logits.dtype).eps)
    soft = F.softmax((logits - torch.log(-torch.log(u))) / tau, dim=dim)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return one_hot - soft.detach() + soft


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook with a straight-through gradient (VQ-VAE).

    Loss: `||sg(z) - e||^2` (codebook term, only without EMA) `+ beta * ||z - sg(e)||^2`
    (commitment term on the encoder output). Options: EMA codebook, l2-normalised codes,
    a low-dimensional lookup space, k-means init, dead-code restart, and the rotation trick in
    place of the straight-through gradient (`rotate_onto`).
    """

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.config = config
        dim = config.latent_channels
        self.code_dim = config.vq_codebook_dim or dim
        self.proj_in = nn.Linear(dim, self.code_dim) if self.code_dim != dim else nn.Identity()
        self.proj_out = nn.Linear(self.code_dim, dim) if self.code_dim != dim else nn.Identity()
        K = config.codebook_size
        embed = torch.randn(K, self.code_dim)
        embed = F.normalize(embed, dim=1) if config.vq_l2_normalize else embed / math.sqrt(self.code_dim)
        self.codebook = nn.Parameter(embed, requires_grad=not config.vq_ema)
        self.register_buffer("ema_count", torch.ones(K))
        self.register_buffer("ema_sum", embed.clone())
        self.register_buffer("initialized", torch.tensor(not config.vq_kmeans_init))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("restarted_total", torch.zeros((), dtype=torch.long))
        # Host copies of `initialized` and `steps`, read from the buffers once (and again after a
        # state-dict load) so that a training step does not wait for the device to branch on them.
        self._host_initialized: bool | None = None
        self._host_steps: int | None = None
        self.register_load_state_dict_post_hook(VectorQuantizer._forget_host_copies)

    @staticmethod
    def _forget_host_copies(module: "VectorQuantizer", incompatible_keys) -> None:
        module._host_initialized = module._host_steps = None

    def _lookup_space(self, z: torch.Tensor) -> torch.Tensor:
        """`[B, D, h, w]` latents -> `[N, code_dim]` vectors in the lookup space (float32)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        flat = self.proj_in(flat)
        return F.normalize(flat, dim=1) if self.config.vq_l2_normalize else flat

    def _codebook(self) -> torch.Tensor:
        cb = self.codebook.float()
        return F.normalize(cb, dim=1) if self.config.vq_l2_normalize else cb

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of `flat [N, code_dim]`."""
        return nearest_rows(flat, self._codebook())

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `[B, D, h, w]` -> nearest codes `[B, h, w]`."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.nearest(self._lookup_space(z)).reshape(z.shape[0], *z.shape[2:])

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes `[B, h, w]` -> quantized latents `[B, D, h, w]` (what the decoder reads)."""
        with torch.autocast(device_type=codes.device.type, enabled=False):
            vecs = self.proj_out(self._codebook()[codes])  # [B, h, w, D]
        return vecs.permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        if dist.is_initialized() and dist.get_rank() != 0:
            centres = torch.empty_like(self.codebook)
        else:
            g = torch.Generator().manual_seed(0)
            centres = kmeans(flat, self.config.codebook_size, self.config.vq_kmeans_iters,
                             generator=g, l2=self.config.vq_l2_normalize)
        broadcast_(centres)
        self.codebook.data.copy_(centres)
        self.ema_sum.copy_(centres)
        self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        K, decay = self.config.codebook_size, self.config.vq_ema_decay
        counts = torch.bincount(codes, minlength=K).float()
        sums = torch.zeros(K, self.code_dim, device=flat.device).index_add_(0, codes, flat)
        all_reduce_sum_(counts)
        all_reduce_sum_(sums)
        self.ema_count.mul_(decay).add_(counts, alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(sums, alpha=1 - decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + K * 1e-5) * n  # Laplace smoothing
        self.codebook.data.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor) -> int:
        """Move rarely used codes onto random current encoder outputs; returns how many."""
        dead = self.ema_count < self.config.vq_restart_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        new = torch.empty(n_dead, self.code_dim, device=flat.device)
        if not (dist.is_initialized() and dist.get_rank() != 0):
            # Seeded by the step count, not drawn from the global RNG, so that a run resumed from
            # a checkpoint restarts exactly the codes an uninterrupted run would (the global RNG
            # is also read by data loading, whose draws differ after a mid-epoch resume).
            g = torch.Generator(device=flat.device).manual_seed(int(self.steps))
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device, generator=g)
            noise = torch.randn(n_dead, self.code_dim, device=flat.device, generator=g)
            new.copy_(flat[pick] + 1e-4 * noise)
        broadcast_(new)
        self.codebook.data[dead] = new
        # A restarted code starts with a modest usage so it is not restarted again at once.
        self.ema_sum[dead] = new * self.config.vq_restart_threshold
        self.ema_count[dead] = self.config.vq_restart_threshold
        self.restarted_total += n_dead
        return n_dead

    def forward(self, z: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        B, _, h, w = z.shape
        cfg = self.config
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self._lookup_space(z)
            if self.training:
                self._init_codebook(flat.detach())
            codes = self.nearest(flat.detach())
            if self.training and cfg.vq_ema:
                restarted = self._update_codebook(flat.detach(), codes)
            else:
                restarted = torch.zeros((), device=z.device)
            codebook = self._codebook()
            e = codebook[codes]
            commitment = F.mse_loss(flat, e.detach())
            loss = cfg.vq_beta * commitment
            if not cfg.vq_ema:
                loss = loss + F.mse_loss(e, flat.detach())
            if cfg.vq_rotation_trick:
                st = rotate_onto(flat, e)
            else:
                st = flat + (e - flat).detach()  # straight-through: identity gradient to the encoder
            quantized = self.proj_out(st).reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()
            counts = torch.bincount(codes, minlength=cfg.codebook_size)
        stats = {"commitment": commitment.detach(), "batch_perplexity": code_perplexity(counts),
                 "restarted": restarted}
        return QuantizerOutput(quantized, codes.reshape(B, h, w), loss, stats)

    # The codebook's bookkeeping runs eagerly under `torch.compile`: it branches on host-side
    # counters that change every step, which would recompile the graph around them.
    @torch.compiler.disable
    def _init_codebook(self, flat: torch.Tensor) -> None:
        """k-means init from the first training batch, once."""
        if self._host_initialized is None:
            self._host_initialized = bool(self.initialized)
        if not self._host_initialized:
            self._kmeans_init(flat)
            self._host_initialized = True

    @torch.compiler.disable
    def _update_codebook(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """EMA update, step count and (every `vq_restart_every` steps) dead-code restart;
        returns how many codes were restarted, as a tensor."""
        cfg = self.config
        self._ema_update(flat, codes)
        steps = self._count_step()
        restarted = 0
        if cfg.vq_restart_every and steps % cfg.vq_restart_every == 0:
            restarted = self._restart_dead_codes(flat)
        return torch.tensor(float(restarted), device=flat.device)

    def _count_step(self) -> int:
        """Count a training step in the `steps` buffer (checkpointed) and its host copy; returns the count."""
        if self._host_steps is None:
            self._host_steps = int(self.steps)
        self.steps += 1
        self._host_steps += 1
        return self._host_steps


class GumbelQuantizer(nn.Module):
    """Relaxed categorical posterior over `K` codes (DALL-E's dVAE).

    The encoder emits `K` logits per position. In training the decoder reads the mixture
    `softmax((logits + g) / tau) @ codebook` (or its straight-through one-hot with
    `gumbel_hard`), with `tau` annealed from `gumbel_tau_start` to `gumbel_tau_end`; the loss is
    the KL from the posterior to the uniform prior, its weight warmed up linearly. At
    inference the code is the argmax.
    """

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.config = config
        self.codebook = nn.Parameter(torch.randn(config.codebook_size, config.latent_channels))

    def temperature(self, step: int | None) -> float:
        """Exponential anneal from tau_start to tau_end over gumbel_tau_steps; the end value at inference."""
        cfg = self.config
        if step is None:
            return cfg.gumbel_tau_end
        frac = min(max(step, 0) / max(cfg.gumbel_tau_steps, 1), 1.0)
        return cfg.gumbel_tau_start * (cfg.gumbel_tau_end / cfg.gumbel_tau_start) ** frac

    def kl_weight(self, step: int | None) -> float:
        cfg = self.config
        if step is None or cfg.gumbel_kl_warmup_steps <= 0:
            return cfg.gumbel_kl_weight
        return cfg.gumbel_kl_weight * min(step / cfg.gumbel_kl_warmup_steps, 1.0)

    def codes(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits `[B, K, h, w]` -> the most probable codes `[B, h, w]`."""
        return logits.float().argmax(1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=codes.device.type, enabled=False):
            return F.embedding(codes, self.codebook.float()).permute(0, 3, 1, 2).contiguous()

    def forward(self, logits: torch.Tensor, step: int | None = None) -> QuantizerOutput:
        cfg = self.config
        K = cfg.codebook_size
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float() * cfg.gumbel_logit_scale
            log_q = F.log_softmax(logits, dim=1)  # [B, K, h, w]
            codes = logits.argmax(1)
            tau = self.temperature(step)
            if self.training:
                probs = gumbel_softmax_sample(logits, tau, hard=cfg.gumbel_hard)
            else:
                probs = F.one_hot(codes, K).permute(0, 3, 1, 2).float()
            quantized = torch.einsum("bkhw,kd->bdhw", probs, self.codebook.float())
            q = log_q.exp()
            # KL(q || uniform) = sum q log q + log K, averaged over positions.
            kl = (q * log_q).sum(1).mean() + math.log(K)
            avg_q = q.mean(dim=(0, 2, 3))  # the batch's marginal code distribution
            marginal_entropy = -(avg_q * torch.log(avg_q.clamp_min(1e-12))).sum()
            loss = self.kl_weight(step) * kl
            if cfg.gumbel_diversity_weight:
                loss = loss + cfg.gumbel_diversity_weight * (math.log(K) - marginal_entropy)
            counts = torch.bincount(codes.flatten(), minlength=K)
        stats = {"kl": kl.detach(), "temperature": tau, "kl_weight": self.kl_weight(step),
                 "batch_perplexity": code_perplexity(counts), "marginal_perplexity": marginal_entropy.detach().exp()}
        return QuantizerOutput(quantized, codes, loss, stats)


def build_quantizer(config: ImageTokenizerConfig) -> nn.Module:
    return VectorQuantizer(config) if config.quantizer == "vq" else GumbelQuantizer(config)
