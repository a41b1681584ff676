"""Quantizer math against brute force."""

import math

import pytest
import torch
import torch.nn.functional as F

from stage1_tokenizer import ImageTokenizerConfig
from stage1_tokenizer.quantizers import (
    GumbelQuantizer, VectorQuantizer, gumbel_softmax_sample, kmeans, nearest_rows, rotate_onto,
)


def vq_config(**kw):
    base = dict(latent_channels=8, codebook_size=16, vq_kmeans_init=False, vq_ema=False, vq_restart_every=0)
    base.update(kw)
    return ImageTokenizerConfig(**base)


def test_nearest_rows_is_the_brute_force_argmin_across_chunks():
    g = torch.Generator().manual_seed(0)
    x, cb = 3.0 + torch.randn(50, 6, generator=g), torch.randn(9, 6, generator=g) + 3.0
    brute = torch.stack([torch.stack([((xi - e) ** 2).sum() for e in cb]) for xi in x]).argmin(1)
    assert torch.equal(nearest_rows(x, cb), brute)
    assert torch.equal(nearest_rows(x, cb, chunk_size=7), brute)  # chunks of 7 rows, the last one short


@pytest.mark.parametrize("l2,code_dim", [(False, None), (True, None), (False, 4), (True, 4)])
def test_nearest_code_is_the_brute_force_argmin(l2, code_dim):
    torch.manual_seed(0)
    q = VectorQuantizer(vq_config(vq_l2_normalize=l2, vq_codebook_dim=code_dim)).eval()
    z = torch.randn(3, 8, 5, 5)
    out = q(z)
    flat = q._lookup_space(z)
    cb = q._codebook().detach()
    brute = torch.tensor([min(range(16), key=lambda k: float(((v - cb[k]) ** 2).sum())) for v in flat.detach()])
    assert torch.equal(out.codes.flatten(), brute)
    assert torch.equal(q.codes(z), out.codes)
    # the decoder input equals the embedded codes (forward value = lookup)
    torch.testing.assert_close(out.quantized, q.embed(out.codes), atol=1e-5, rtol=1e-5)


def test_straight_through_gradient_is_identity_on_the_encoder_side():
    torch.manual_seed(0)
    q = VectorQuantizer(vq_config(vq_beta=0.0)).train()
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = q(z)
    upstream = torch.randn_like(out.quantized)
    (out.quantized * upstream).sum().backward()
    torch.testing.assert_close(z.grad, upstream)


def test_rotation_trick_passes_the_gradient_through_the_rotation_onto_the_code():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(5, 4, generator=g, dtype=torch.float64)
    upstream = torch.randn(5, 4, generator=g, dtype=torch.float64)
    out = rotate_onto(z, q)
    assert torch.equal(out.detach(), q)  # the forward value is the code itself
    (out * upstream).sum().backward()
    for i in range(5):  # the gradient is (|q| / |z|) R^T g with R the rotation taking z's direction to q's
        zi, qi = z[i].detach(), q[i]
        u, v = zi / zi.norm(), qi / qi.norm()
        r = (u + v) / (u + v).norm()
        R = torch.eye(4, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(v, u)
        torch.testing.assert_close(R @ u, v)
        torch.testing.assert_close(R.T @ R, torch.eye(4, dtype=torch.float64))
        torch.testing.assert_close(z.grad[i], qi.norm() / zi.norm() * R.T @ upstream[i])


def test_rotation_trick_in_the_quantizer_keeps_codes_and_values_and_changes_the_gradient():
    torch.manual_seed(0)
    z = torch.randn(2, 8, 3, 3)
    outs = {}
    for rotation in (False, True):
        torch.manual_seed(1)
        q = VectorQuantizer(vq_config(vq_beta=0.0, vq_rotation_trick=rotation)).train()
        zr = z.clone().requires_grad_(True)
        out = q(zr)
        (out.quantized * torch.ones_like(out.quantized)).sum().backward()
        outs[rotation] = (out, zr.grad)
    assert torch.equal(outs[False][0].codes, outs[True][0].codes)
    torch.testing.assert_close(outs[False][0].quantized, outs[True][0].quantized)
    assert not torch.allclose(outs[False][1], outs[True][1])


def test_losses_put_beta_on_the_commitment_term():
    torch.manual_seed(0)
    q = VectorQuantizer(vq_config(vq_beta=0.3)).train()
    z = torch.randn(2, 8, 3, 3, requires_grad=True)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    e = q.codebook[out.codes.flatten()]
    expected = F.mse_loss(e, flat.detach()) + 0.3 * F.mse_loss(flat, e.detach())
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    # encoder gradient comes only from the beta-weighted commitment term
    torch.testing.assert_close(
        z.grad.permute(0, 2, 3, 1).reshape(-1, 8), 0.3 * 2 * (flat - e).detach() / flat.numel()
    )
    # codebook gradient only from the codebook term
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0


def test_ema_update_formula():
    torch.manual_seed(0)
    decay = 0.9
    q = VectorQuantizer(vq_config(vq_ema=True, vq_ema_decay=decay)).train()
    count0, sum0 = q.ema_count.clone(), q.ema_sum.clone()
    z = torch.randn(4, 8, 4, 4)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    codes = q.codes(z).flatten()
    q(z)
    n_k = torch.stack([(codes == k).sum() for k in range(16)]).float()
    s_k = torch.stack([flat[codes == k].sum(0) for k in range(16)])
    count = decay * count0 + (1 - decay) * n_k
    total = decay * sum0 + (1 - decay) * s_k
    torch.testing.assert_close(q.ema_count, count)
    torch.testing.assert_close(q.ema_sum, total)
    n = count.sum()
    smoothed = (count + 1e-5) / (n + 16 * 1e-5) * n
    torch.testing.assert_close(q.codebook.data, total / smoothed[:, None])
    assert not q.codebook.requires_grad


def test_dead_codes_are_restarted_onto_encoder_outputs():
    torch.manual_seed(0)
    q = VectorQuantizer(vq_config(vq_ema=True, vq_restart_every=1, vq_restart_threshold=0.5)).train()
    # Put all codes far away except code 0, so every input maps to code 0 and the rest die.
    with torch.no_grad():
        q.codebook.data[1:] = 100.0
        q.codebook.data[0] = 0.0
        q.ema_sum.copy_(q.codebook.data)
        q.ema_count.fill_(0.0)
        q.ema_count[0] = 10.0
    z = torch.randn(2, 8, 4, 4)
    out = q(z)
    assert out.stats["restarted"] == 15
    flat = z.permute(0, 2, 3, 1).reshape(-1, 8)
    # each restarted code now sits (up to tiny noise) on one of the current encoder outputs
    d = torch.cdist(q.codebook.data[1:], flat).pow(2).min(1).values
    assert float(d.max()) < 1e-4
    assert bool((q.ema_count[1:] >= 0.5).all())


def test_kmeans_init_runs_once_and_fits_the_data():
    torch.manual_seed(0)
    q = VectorQuantizer(vq_config(vq_kmeans_init=True, vq_ema=True, codebook_size=4)).train()
    centres = torch.tensor([[5.0] * 8, [-5.0] * 8, [5.0] * 4 + [-5.0] * 4, [-5.0] * 4 + [5.0] * 4])
    pts = centres.repeat_interleave(16, 0) + 0.01 * torch.randn(64, 8)
    z = pts.reshape(4, 4, 4, 8).permute(0, 3, 1, 2)
    assert not bool(q.initialized)
    q(z)
    assert bool(q.initialized)
    d = torch.cdist(centres, q.codebook.data).pow(2).min(1).values
    assert float(d.max()) < 0.1


def test_kmeans_reduces_distortion():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g)
    c0 = kmeans(x, 8, iters=0, generator=torch.Generator().manual_seed(1))
    c1 = kmeans(x, 8, iters=10, generator=torch.Generator().manual_seed(1))
    def distortion(c):
        return float(torch.cdist(x, c).pow(2).min(1).values.mean())
    assert distortion(c1) < distortion(c0)


def test_quantizer_runs_in_float32_under_autocast():
    q = VectorQuantizer(vq_config()).train()
    z = torch.randn(2, 8, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z.bfloat16())
    assert out.quantized.dtype == torch.float32 and out.loss.dtype == torch.float32


def gumbel_config(**kw):
    base = dict(quantizer="gumbel", latent_channels=8, codebook_size=10, gumbel_tau_start=1.0,
                gumbel_tau_end=0.01, gumbel_tau_steps=100, gumbel_kl_warmup_steps=10, gumbel_kl_weight=0.5)
    base.update(kw)
    return ImageTokenizerConfig(**base)


def test_gumbel_samples_approach_one_hot_as_temperature_falls():
    torch.manual_seed(0)
    logits = torch.randn(64, 10).repeat(50, 1)
    max_prob = [float(gumbel_softmax_sample(logits, tau, dim=1).max(1).values.mean()) for tau in (2.0, 1.0, 0.3, 0.05)]
    assert max_prob == sorted(max_prob)
    assert max_prob[-1] > 0.97 and max_prob[0] < 0.8


def test_gumbel_max_follows_the_softmax_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).repeat(40_000, 1)
    samples = gumbel_softmax_sample(logits, tau=0.01, dim=1)
    freq = samples.argmax(1).bincount(minlength=4).float() / len(samples)
    torch.testing.assert_close(freq, logits[0].softmax(0), atol=0.01, rtol=0)


def test_hard_gumbel_is_one_hot_with_the_soft_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, requires_grad=True)
    torch.manual_seed(1)
    hard = gumbel_softmax_sample(logits, tau=0.5, hard=True, dim=1)
    assert torch.equal(hard.detach().sum(1), torch.ones(5)) and set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    weights = torch.randn(5, 7)
    (hard * weights).sum().backward()
    grad_hard = logits.grad.clone()
    logits.grad = None
    torch.manual_seed(1)
    (gumbel_softmax_sample(logits, tau=0.5, dim=1) * weights).sum().backward()
    torch.testing.assert_close(grad_hard, logits.grad)


def test_gumbel_quantizer_schedule_and_mixture():
    torch.manual_seed(0)
    q = GumbelQuantizer(gumbel_config()).train()
    assert q.temperature(0) == pytest.approx(1.0)
    assert q.temperature(50) == pytest.approx(0.1)
    assert q.temperature(1000) == pytest.approx(0.01)
    assert q.temperature(None) == pytest.approx(0.01)
    assert q.kl_weight(5) == pytest.approx(0.25) and q.kl_weight(100) == pytest.approx(0.5)
    logits = torch.randn(2, 10, 3, 3)
    # at a very low temperature the training mixture is nearly one codebook vector
    out = q(logits, step=10_000)
    nearest = q.embed(out.quantized.new_zeros(2, 3, 3, dtype=torch.long))  # shape only
    assert out.quantized.shape == nearest.shape
    weights = q.codebook.detach()
    d = torch.cdist(out.quantized.permute(0, 2, 3, 1).reshape(-1, 8), weights).min(1).values
    near = (d < 1e-2 * weights.norm(dim=1).mean()).float().mean()
    assert float(near) >= 0.8  # almost every position reads (nearly) a single codebook vector
    # KL to the uniform prior, weighted by the warmed-up weight
    log_q = F.log_softmax(logits, 1)
    kl = (log_q.exp() * (log_q + math.log(10))).sum(1).mean()
    out = q(logits, step=5)
    torch.testing.assert_close(out.loss, 0.25 * kl)
    # inference uses the argmax
    q.eval()
    out = q(logits)
    assert torch.equal(out.codes, logits.argmax(1))
    torch.testing.assert_close(out.quantized, q.embed(out.codes))


def test_gumbel_kl_is_zero_for_uniform_posterior():
    q = GumbelQuantizer(gumbel_config(gumbel_kl_warmup_steps=0)).train()
    out = q(torch.zeros(1, 10, 2, 2), step=0)
    assert abs(out.stats["kl"]) < 1e-6
