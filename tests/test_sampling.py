"""Stage 2: the token layout, the prior's loss, and `sample_codes` (cache, seeds, filters, guidance)."""

import pytest
import torch
import torch.nn.functional as F

from stage2_prior.layout import TokenLayout
from stage2_prior.model import ImagePrior, PriorConfig
from stage2_prior.sampling import SamplingOptions, filter_logits, guidance_scales, resolve_options, sample_codes
from trainkit.files import CheckpointError

K = 16
NAMES = ("zero", "one", "two", "three")
LAYOUT = TokenLayout(codebook_size=K, grid=(3, 3), num_classes=4, class_names=NAMES)
UNCOND = TokenLayout(codebook_size=K, grid=(3, 3))
T = LAYOUT.num_image_tokens


def make_prior(arch: str = "llama", layout: TokenLayout = LAYOUT, sharpen: float = 30.0, **config) -> ImagePrior:
    """A tiny random prior; its lm_head is scaled up so next-token distributions are far from uniform."""
    torch.manual_seed(0)
    prior = ImagePrior.from_config(PriorConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=2, **config),
                                   layout)
    with torch.no_grad():
        prior.lm.get_output_embeddings().weight.mul_(sharpen)
    return prior.eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def prior(request) -> ImagePrior:
    return make_prior(request.param)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def uncond_prior(request) -> ImagePrior:
    return make_prior(request.param, layout=UNCOND)


def code_logits(prior: ImagePrior, ids: torch.Tensor) -> torch.Tensor:
    """Uncached forward: the image-code logits `[B, L, K]` after every position of `ids`."""
    with torch.no_grad():
        return prior.lm(input_ids=ids).logits[..., :prior.layout.codebook_size].float()


def teacher_forced_logits(prior: ImagePrior, labels: torch.Tensor, codes: torch.Tensor, scale: float = 1.0):
    """The (guided) code logits of every step `[B, h*w, K]` given the produced prefix `codes`."""
    layout = prior.layout
    cond = layout.to_sequences(codes, layout.class_id(labels))[:, :-1]
    c = code_logits(prior, cond)
    if scale == 1.0:
        return c
    null = layout.to_sequences(codes, torch.full_like(labels, layout.null_id))[:, :-1]
    u = code_logits(prior, null)
    return u + scale * (c - u)


# ------------------------------------------------------------------------------------------ layout


def test_layout_ids_do_not_overlap_and_round_trip(tmp_path):
    layout = LAYOUT
    class_ids = layout.class_id(torch.arange(4)).tolist()
    assert class_ids == [16, 17, 18, 19]
    assert (layout.null_id, layout.bos_id, layout.vocab_size) == (20, 21, 22)
    ids = list(range(K)) + class_ids + [layout.null_id, layout.bos_id]
    assert len(set(ids)) == len(ids) == layout.vocab_size

    codes = torch.randint(0, K, (5, 3, 3), generator=torch.Generator().manual_seed(0))
    conditions = layout.class_id(torch.tensor([0, 1, 2, 3, 0]))
    seq = layout.to_sequences(codes, conditions)
    assert seq.shape == (5, layout.seq_len) and torch.equal(seq[:, 0], conditions)
    assert torch.equal(layout.to_codes(seq), codes) and torch.equal(layout.to_codes(seq[:, 1:]), codes)
    bad = seq.clone()
    bad[0, 3] = layout.null_id
    with pytest.raises(ValueError, match="not image codes"):
        layout.to_codes(bad)
    with pytest.raises(ValueError, match="grid"):
        layout.to_sequences(codes[:, :2], conditions)

    layout.save(tmp_path)
    loaded = TokenLayout.load(tmp_path)
    assert loaded == layout and loaded.class_names == NAMES and loaded.vocab_size == layout.vocab_size
    with pytest.raises(FileNotFoundError, match="token_layout.json"):
        TokenLayout.load(tmp_path / "missing")


def test_unconditional_layout(tmp_path):
    layout = UNCOND
    assert not layout.conditional and layout.null_id is None
    assert (layout.bos_id, layout.vocab_size) == (K, K + 1)
    assert layout.condition_ids(None, 3).tolist() == [K] * 3
    with pytest.raises(ValueError, match="unconditional"):
        layout.class_id(torch.tensor([0]))
    layout.save(tmp_path)
    assert TokenLayout.load(tmp_path) == layout


# ------------------------------------------------------------------------------------------ loss


def test_forward_loss_is_cross_entropy_over_image_tokens_only(prior):
    layout = prior.layout
    codes = torch.randint(0, K, (4, 3, 3), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        loss = prior(codes, labels)
        seq = torch.cat([(labels + K)[:, None], codes.flatten(1)], dim=1)
        logits = prior.lm(input_ids=seq).logits.float()                      # [B, 1 + h*w, V]
    targets = seq[:, 1:]                                                      # the h*w codes, never the condition
    nll = -logits[:, :-1].log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    assert nll.shape == (4, T)
    assert torch.allclose(loss, nll.mean(), atol=1e-5)
    assert torch.allclose(loss, F.cross_entropy(logits[:, :-1].reshape(-1, layout.vocab_size), targets.reshape(-1)),
                          atol=1e-5)
    with torch.no_grad():
        other = prior(codes, (labels + 1) % 4)
        dropped = prior(codes, labels, drop_class_prob=1.0)                   # every condition -> null
        null_seq = layout.to_sequences(codes, torch.full_like(labels, layout.null_id))
        null_nll = F.cross_entropy(prior.lm(input_ids=null_seq[:, :-1]).logits.reshape(-1, layout.vocab_size),
                                   null_seq[:, 1:].reshape(-1))
    assert not torch.allclose(other, loss, atol=1e-4)
    assert torch.allclose(dropped, null_nll, atol=1e-5)


def test_forward_loss_unconditional(uncond_prior):
    codes = torch.randint(0, K, (3, 3, 3), generator=torch.Generator().manual_seed(2))
    seq = torch.cat([torch.full((3, 1), UNCOND.bos_id), codes.flatten(1)], dim=1)
    with torch.no_grad():
        loss = uncond_prior(codes)
        manual = F.cross_entropy(uncond_prior.lm(input_ids=seq).logits[:, :-1].reshape(-1, UNCOND.vocab_size),
                                 seq[:, 1:].reshape(-1))
    assert torch.allclose(loss, manual, atol=1e-5)


# ------------------------------------------------------------------------------------------ cache, batches, seeds


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cache_matches_no_cache(prior, temperature, guidance):
    kw = dict(class_labels=[0, 1, 2, 3], guidance_scale=guidance, temperature=temperature, seed=7)
    cached = sample_codes(prior, 4, use_cache=True, **kw)
    assert cached.shape == (4, 3, 3)
    assert torch.equal(cached, sample_codes(prior, 4, use_cache=False, **kw))


def test_unconditional_cache_and_batches(uncond_prior):
    ref = sample_codes(uncond_prior, 5, seed=4)
    assert torch.equal(ref, sample_codes(uncond_prior, 5, seed=4, use_cache=False))
    assert torch.equal(ref, sample_codes(uncond_prior, 5, seed=4, batch_size=2))


def test_batch_size_invariance(prior):
    kw = dict(class_labels=[3, 1, 0, 2, 1], guidance_scale=2.0, top_k=8, top_p=0.9, seed=3)
    ref = sample_codes(prior, 5, **kw)
    for batch_size in (2, 3):
        assert torch.equal(ref, sample_codes(prior, 5, batch_size=batch_size, **kw))


def test_seeds_and_generators(prior):
    kw = dict(class_labels=1)
    a = sample_codes(prior, 6, seed=5, **kw)
    assert torch.equal(a, sample_codes(prior, 6, seed=5, **kw))
    assert torch.equal(a, sample_codes(prior, 6, generator=torch.Generator().manual_seed(5), **kw))
    assert not torch.equal(a, sample_codes(prior, 6, seed=6, **kw))
    # a seeded call leaves torch's global generator alone; an unseeded one draws from it (so it is reproducible)
    state = torch.get_rng_state()
    sample_codes(prior, 2, seed=5, **kw)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(123)
    b = sample_codes(prior, 6, **kw)
    torch.manual_seed(123)
    assert torch.equal(b, sample_codes(prior, 6, **kw))


def test_sampling_uses_eval_mode_and_restores_training():
    prior = make_prior("gpt2", dropout=0.5).train()
    kw = dict(class_labels=[0, 1, 2], guidance_scale=2.0, seed=9)
    a = sample_codes(prior, 3, **kw)
    assert torch.equal(a, sample_codes(prior, 3, use_cache=False, **kw))
    assert prior.lm.training


# ------------------------------------------------------------------------------------------ filters, temperature


def test_top_k_one_is_greedy(prior):
    kw = dict(class_labels=[0, 1, 2, 3], guidance_scale=2.0)
    greedy = sample_codes(prior, 4, temperature=0.0, **kw)
    assert torch.equal(greedy, sample_codes(prior, 4, top_k=1, seed=1, **kw))
    assert torch.equal(greedy, sample_codes(prior, 4, temperature=1e-4, seed=2, **kw))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_top_k_tokens_are_among_the_k_best(prior, guidance):
    labels = torch.tensor([0, 1, 2, 3, 0, 1])

    def ranks(**kw):
        codes = sample_codes(prior, 6, class_labels=labels, guidance_scale=guidance, seed=11, **kw)
        logits = teacher_forced_logits(prior, labels, codes, guidance)          # [B, h*w, K]
        chosen = logits.gather(-1, codes.flatten(1)[..., None])
        return (logits > chosen).sum(-1)                                        # 0 = the most likely code

    assert (ranks(top_k=3) < 3).all()
    assert (ranks() >= 3).any()                                                 # without top-k they do occur


def test_filter_logits_top_p_keeps_the_minimal_nucleus():
    probs = torch.tensor([[0.15, 0.50, 0.10, 0.25],
                          [0.10, 0.25, 0.15, 0.50]])
    logits = probs.log()

    def kept(**kw):
        out = filter_logits(logits, **kw)
        assert torch.equal(out[out.isfinite()], logits[out.isfinite()])          # survivors are unchanged
        return [sorted(row.isfinite().nonzero().flatten().tolist()) for row in out]

    assert kept(top_p=1e-6) == [[1], [3]]                                       # the top token always survives
    assert kept(top_p=0.4) == [[1], [3]]
    assert kept(top_p=0.6) == [[1, 3], [1, 3]]
    assert kept(top_p=0.8) == [[0, 1, 3], [1, 2, 3]]
    assert kept(top_p=0.95) == [[0, 1, 2, 3]] * 2
    assert kept(top_p=1.0) == [[0, 1, 2, 3]] * 2
    assert kept(top_p=0.8, temperature=0.5) == [[1, 3], [1, 3]]                 # nucleus of softmax(logits / T)
    assert kept(top_k=2) == [[1, 3], [1, 3]]
    assert kept(top_k=3, top_p=0.6) == [[1, 3], [1, 3]]


def test_first_token_frequencies_match_softmax(prior):
    n, label = 2000, 2
    codes = sample_codes(prior, n, class_labels=label, temperature=1.0, seed=0)
    expected = code_logits(prior, torch.tensor([[K + label]]))[0, 0].softmax(-1)
    assert expected.max() > 0.2                                                 # far from uniform
    observed = torch.bincount(codes[:, 0, 0], minlength=K).float() / n
    assert (observed - expected).abs().max() < 0.03


# ------------------------------------------------------------------------------------------ guidance


def test_guidance_scale_one_is_plain_conditional_and_three_differs(prior):
    kw = dict(class_labels=[0, 1, 2, 3, 0, 1, 2, 3], seed=21)
    plain = sample_codes(prior, 8, **kw)
    assert torch.equal(plain, sample_codes(prior, 8, guidance_scale=1.0, **kw))
    assert not torch.equal(plain, sample_codes(prior, 8, guidance_scale=3.0, **kw))


@pytest.mark.parametrize("scale, schedule", [(1.0, "constant"), (3.0, "constant"), (5.0, "linear")])
def test_guided_greedy_matches_manual_mixing(prior, scale, schedule):
    layout = prior.layout
    labels = torch.tensor([0, 1, 2, 3])
    cond = layout.class_id(labels)[:, None]
    null = torch.full_like(cond, layout.null_id)
    codes = torch.empty(4, 0, dtype=torch.long)
    for t in range(T):
        s = scale if schedule == "constant" else 1 + (scale - 1) * t / (T - 1)
        c = code_logits(prior, torch.cat([cond, codes], 1))[:, -1]
        u = code_logits(prior, torch.cat([null, codes], 1))[:, -1]
        codes = torch.cat([codes, (u + s * (c - u)).argmax(-1, keepdim=True)], 1)
    sampled = sample_codes(prior, 4, class_labels=labels, guidance_scale=scale, guidance_schedule=schedule,
                           temperature=0.0)
    assert torch.equal(sampled.flatten(1), codes)


def with_guide(prior: ImagePrior, guide: ImagePrior) -> ImagePrior:
    return ImagePrior(prior.lm, prior.layout, guide).eval()


@pytest.mark.parametrize("scale, auto", [(1.0, 1.5), (3.0, 0.5)])
def test_autoguided_greedy_matches_manual_mixing(prior, scale, auto):
    """Autoguidance adds a * (c - g), g the guide's conditional logits, to the (guided) logits."""
    guide = make_prior(type(prior.lm).__name__.startswith("GPT2") and "gpt2" or "llama", sharpen=10.0)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
    guided = with_guide(prior, guide)
    labels = torch.tensor([0, 1, 2, 3])
    cond = LAYOUT.class_id(labels)[:, None]
    null = torch.full_like(cond, LAYOUT.null_id)
    codes = torch.empty(4, 0, dtype=torch.long)
    for _ in range(T):
        c = code_logits(prior, torch.cat([cond, codes], 1))[:, -1]
        u = code_logits(prior, torch.cat([null, codes], 1))[:, -1]
        g = code_logits(guide, torch.cat([cond, codes], 1))[:, -1]
        codes = torch.cat([codes, (u + scale * (c - u) + auto * (c - g)).argmax(-1, keepdim=True)], 1)
    sampled = sample_codes(guided, 4, class_labels=labels, guidance_scale=scale, autoguidance_scale=auto,
                           temperature=0.0)
    assert torch.equal(sampled.flatten(1), codes)
    kw = dict(class_labels=[0, 1, 2, 3], seed=4, guidance_scale=scale)
    assert torch.equal(sample_codes(guided, 4, autoguidance_scale=0.0, **kw), sample_codes(prior, 4, **kw))
    assert not torch.equal(sample_codes(guided, 4, autoguidance_scale=auto, **kw), sample_codes(prior, 4, **kw))
    assert torch.equal(sample_codes(guided, 4, autoguidance_scale=auto, use_cache=False, **kw),
                       sample_codes(guided, 4, autoguidance_scale=auto, batch_size=3, **kw))


def test_autoguidance_needs_a_guide_of_the_same_layout(prior, uncond_prior):
    with pytest.raises(ValueError, match="needs a prior saved with a guide"):
        sample_codes(prior, 2, class_labels=[0, 1], autoguidance_scale=1.0)
    with pytest.raises(ValueError, match="same codes and classes"):
        ImagePrior(prior.lm, prior.layout, uncond_prior)
    with pytest.raises(ValueError, match="autoguidance_scale must be a finite number >= 0"):
        SamplingOptions(autoguidance_scale=-1.0)
    # unconditional sampling takes autoguidance too: the guide reads the same start token
    guided = with_guide(uncond_prior, make_prior("llama", layout=UNCOND, sharpen=5.0))
    assert not torch.equal(sample_codes(guided, 3, seed=1, autoguidance_scale=2.0), sample_codes(guided, 3, seed=1))


def test_a_prior_saved_with_its_guide_loads_with_it(tmp_path):
    import json
    import shutil

    prior = with_guide(make_prior(), make_prior(sharpen=5.0))
    prior.sampling_defaults = SamplingOptions(guidance_scale=2.0, autoguidance_scale=0.75)
    prior.save_pretrained(tmp_path / "p")
    stored = json.loads((tmp_path / "p" / "generation_config.json").read_text())
    assert stored["autoguidance_scale"] == 0.75 and (tmp_path / "p" / "guide" / "model.safetensors").is_file()
    reloaded = ImagePrior.from_pretrained(tmp_path / "p")
    assert reloaded.guide is not None and reloaded.sampling_defaults.autoguidance_scale == 0.75
    labels = [0, 1, 2, 3]
    assert torch.equal(sample_codes(reloaded, 4, class_labels=labels, seed=2),
                       sample_codes(prior, 4, class_labels=labels, seed=2))
    # saved again without the guide into the same directory: the old guide/ folder is not taken for its
    alone = make_prior()
    alone.sampling_defaults = SamplingOptions(guidance_scale=2.0, autoguidance_scale=0.75)
    alone.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "guide").is_dir()
    assert ImagePrior.from_pretrained(tmp_path / "p").guide is None
    assert json.loads((tmp_path / "p" / "generation_config.json").read_text()).get("autoguidance_scale") is None
    # a prior saved with a guide whose folder went missing is an error that says so
    prior.save_pretrained(tmp_path / "q")
    shutil.rmtree(tmp_path / "q" / "guide")
    with pytest.raises(CheckpointError, match="guide/ folder is missing"):
        ImagePrior.from_pretrained(tmp_path / "q")


def test_guidance_schedules():
    assert guidance_scales(3.0, "constant", 4) == [3.0] * 4
    assert guidance_scales(4.0, "linear", 4) == [1.0, 2.0, 3.0, 4.0]
    assert guidance_scales(4.0, "linear", 1) == [4.0]
    with pytest.raises(ValueError, match="guidance_schedule must be one of"):
        SamplingOptions(guidance_schedule="cosine")


def test_linear_schedule_starts_unguided_and_ends_at_the_full_scale(prior):
    labels, seed = [0, 1, 2, 3, 0, 1, 2, 3], 8
    ramp = sample_codes(prior, 8, class_labels=labels, seed=seed, guidance_scale=4.0, guidance_schedule="linear")
    plain = sample_codes(prior, 8, class_labels=labels, seed=seed, guidance_scale=1.0)
    constant = sample_codes(prior, 8, class_labels=labels, seed=seed, guidance_scale=4.0)
    assert torch.equal(ramp.flatten(1)[:, 0], plain.flatten(1)[:, 0])          # scale 1 at the first code
    assert not torch.equal(ramp, constant) and not torch.equal(ramp, plain)
    # given every code but the last, the ramp's last step is the constant scale's
    prefix = ramp.flatten(1)[:, :-1]
    last = sample_codes(prior, 8, class_labels=labels, seed=seed, guidance_scale=4.0, prefix=prefix)
    assert torch.equal(last, ramp)


def test_only_code_ids_are_emitted():
    prior = make_prior("llama")
    bias = torch.zeros(LAYOUT.vocab_size)
    bias[K:] = 1e4                                                              # class, null and BOS ids dominate
    prior.lm.get_output_embeddings().register_forward_hook(lambda module, args, out: out + bias)
    assert (prior.lm(input_ids=torch.tensor([[K]])).logits.argmax(-1) >= K).all()
    for kw in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9), dict(guidance_scale=3.0, top_k=4)):
        codes = sample_codes(prior, 4, class_labels=[0, 1, 2, 3], seed=1, **kw)
        assert 0 <= int(codes.min()) and int(codes.max()) < K


# ------------------------------------------------------------------------------------------ inputs


def test_bad_inputs(prior, uncond_prior):
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        sample_codes(prior, 2, class_labels=[0, 4])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        sample_codes(prior, 1, class_labels=-1)
    with pytest.raises(ValueError, match="unconditional"):
        sample_codes(uncond_prior, 2, class_labels=[0, 1])
    with pytest.raises(ValueError, match="guidance needs class_labels"):
        sample_codes(prior, 2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="3 class labels for 4 images"):
        sample_codes(prior, 4, class_labels=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown class name 'zebra'"):
        sample_codes(prior, 2, class_labels=["one", "zebra"])
    with pytest.raises(ValueError, match="num_images"):
        sample_codes(prior, 0, class_labels=0)
    for bad in (dict(temperature=-1.0), dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5),
                dict(batch_size=-1)):
        with pytest.raises(ValueError):
            sample_codes(prior, 2, class_labels=0, **bad)


def test_class_names_and_label_forms(prior):
    by_name = sample_codes(prior, 3, class_labels=["zero", "two", "three"], seed=8)
    assert torch.equal(by_name, sample_codes(prior, 3, class_labels=[0, 2, 3], seed=8))
    assert torch.equal(by_name, sample_codes(prior, 3, class_labels=torch.tensor([0, 2, 3]), seed=8))
    one = sample_codes(prior, 3, class_labels="two", seed=8)
    assert torch.equal(one, sample_codes(prior, 3, class_labels=2, seed=8))
    assert torch.equal(one, sample_codes(prior, 3, class_labels=torch.tensor(2), seed=8))
    null = sample_codes(prior, 3, seed=8)                                       # conditional prior, no labels: null
    assert null.shape == (3, 3, 3)


# ------------------------------------------------------------------------------------------ persistence


def test_saved_prior_works_with_transformers_generate(prior, tmp_path):
    from transformers import AutoModelForCausalLM

    prior.save_pretrained(tmp_path)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(lm) is type(prior.lm)
    labels = torch.tensor([0, 1, 2, 3])
    start = prior.layout.class_id(labels)[:, None]
    out = lm.generate(start, attention_mask=torch.ones_like(start), do_sample=False, max_new_tokens=T,
                      min_new_tokens=T, suppress_tokens=list(range(K, prior.layout.vocab_size)),
                      pad_token_id=prior.layout.bos_id)
    ours = sample_codes(prior, 4, class_labels=labels, temperature=0.0)
    assert torch.equal(out[:, 1:], ours.flatten(1))

    reloaded = ImagePrior.from_pretrained(tmp_path)
    assert reloaded.layout == prior.layout
    assert torch.equal(sample_codes(reloaded, 4, class_labels=labels, seed=3),
                       sample_codes(prior, 4, class_labels=labels, seed=3))


def saved_with_defaults(tmp_path, arch: str = "llama", **defaults) -> ImagePrior:
    """A tiny prior whose sampling defaults are `defaults`, saved into `tmp_path`."""
    prior = make_prior(arch)
    prior.sampling_defaults = SamplingOptions(**defaults)
    prior.save_pretrained(tmp_path)
    return prior


def test_saved_prior_holds_its_sampling_defaults_in_generation_config(tmp_path):
    import json

    fresh = json.loads((make_prior().save_pretrained(tmp_path / "fresh") / "generation_config.json").read_text())
    assert (fresh["do_sample"], fresh["temperature"], fresh["top_k"], fresh["top_p"]) == (True, 1.0, 0, 1.0)
    assert fresh.get("guidance_scale") is None and fresh["class_guidance_scale"] is None
    assert (fresh["max_new_tokens"], fresh["min_new_tokens"]) == (T, T)
    assert fresh["suppress_tokens"] == list(range(K, LAYOUT.vocab_size))
    assert fresh["bos_token_id"] == fresh["eos_token_id"] == fresh["pad_token_id"] == LAYOUT.bos_id

    saved_with_defaults(tmp_path / "tuned", temperature=0.7, top_k=5, top_p=0.9, guidance_scale=2.5,
                        guidance_schedule="linear")
    tuned = json.loads((tmp_path / "tuned" / "generation_config.json").read_text())
    assert (tuned["temperature"], tuned["top_k"], tuned["top_p"], tuned["class_guidance_scale"]) == (0.7, 5, 0.9, 2.5)
    assert tuned.get("guidance_scale") is None and tuned["class_guidance_schedule"] == "linear"
    reloaded = ImagePrior.from_pretrained(tmp_path / "tuned")
    assert reloaded.sampling_defaults == SamplingOptions(guidance_scale=2.5, guidance_schedule="linear",
                                                         temperature=0.7, top_k=5, top_p=0.9)

    saved_with_defaults(tmp_path / "greedy", temperature=0.0)
    greedy = json.loads((tmp_path / "greedy" / "generation_config.json").read_text())
    assert greedy["do_sample"] is False and "temperature" not in greedy
    assert ImagePrior.from_pretrained(tmp_path / "greedy").sampling_defaults.temperature == 0.0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_plain_transformers_generate_uses_the_stored_defaults(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    labels = torch.tensor([0, 1, 2, 3])
    start = LAYOUT.class_id(labels)[:, None]
    # greedy by default, with a stored guidance that transformers' own CFG must not pick up on its own
    prior = saved_with_defaults(tmp_path / "greedy", arch, temperature=0.0, guidance_scale=3.0)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "greedy").eval()
    out = lm.generate(start, attention_mask=torch.ones_like(start))
    assert torch.equal(out[:, 1:], sample_codes(prior, 4, class_labels=labels, guidance_scale=1.0).flatten(1))
    guided = lm.generate(start, attention_mask=torch.ones_like(start),
                         guidance_scale=lm.generation_config.class_guidance_scale,
                         negative_prompt_ids=torch.full_like(start, LAYOUT.null_id))
    assert torch.equal(guided[:, 1:], sample_codes(prior, 4, class_labels=labels).flatten(1))
    assert not torch.equal(guided, out)
    # sampling by default: a whole grid of image codes; top_k=1 makes it the greedy grid
    saved_with_defaults(tmp_path / "top1", arch, temperature=1.0, top_k=1)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "top1").eval()
    assert lm.generation_config.do_sample
    assert torch.equal(lm.generate(start, attention_mask=torch.ones_like(start)), out)
    saved_with_defaults(tmp_path / "sampled", arch)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "sampled").eval()
    torch.manual_seed(0)
    sampled = lm.generate(start.repeat(8, 1), attention_mask=torch.ones_like(start.repeat(8, 1)))
    assert sampled.shape == (32, 1 + T) and int(sampled[:, 1:].max()) < K
    assert not torch.equal(sampled[:4], out)


def test_stored_defaults_apply_and_explicit_options_win(tmp_path):
    labels = [0, 1, 2, 3, 0, 1]
    plain = make_prior()
    saved_with_defaults(tmp_path, temperature=1.6, top_k=6, guidance_scale=2.5)
    tuned = ImagePrior.from_pretrained(tmp_path)
    ref = sample_codes(tuned, 6, class_labels=labels, seed=3)
    assert torch.equal(ref, sample_codes(plain, 6, class_labels=labels, seed=3, temperature=1.6, top_k=6,
                                         guidance_scale=2.5))
    assert not torch.equal(ref, sample_codes(tuned, 6, class_labels=labels, seed=3, temperature=1.0))
    # overrides win, as keywords or as one options object; top_k=0 switches the stored top-k off
    explicit = dict(temperature=1.0, top_k=0, guidance_scale=1.0)
    untuned = sample_codes(plain, 6, class_labels=labels, seed=3)
    assert torch.equal(untuned, sample_codes(tuned, 6, class_labels=labels, seed=3, **explicit))
    as_object = SamplingOptions(seed=3, **explicit)
    assert torch.equal(untuned, sample_codes(tuned, 6, class_labels=labels, options=as_object))
    assert torch.equal(untuned, sample_codes(tuned, 6, class_labels=labels, temperature=1.0, guidance_scale=1.0,
                                             options=SamplingOptions(seed=4, top_k=0, temperature=0.5), seed=3))
    # without labels the stored guidance does not apply (and is no error)
    assert torch.equal(sample_codes(tuned, 2, seed=1), sample_codes(plain, 2, seed=1, temperature=1.6, top_k=6))


def test_top_k_zero_and_top_p_one_mean_no_filter(prior):
    kw = dict(class_labels=[0, 1, 2, 3], seed=5)
    ref = sample_codes(prior, 4, **kw)
    assert torch.equal(ref, sample_codes(prior, 4, top_k=0, top_p=1.0, **kw))
    chosen = resolve_options(prior, [0], SamplingOptions(top_k=0, top_p=1.0))
    assert chosen == SamplingOptions(guidance_scale=1.0, guidance_schedule="constant", temperature=1.0, top_k=0,
                                     top_p=1.0, autoguidance_scale=0.0)
    tuned = make_prior()
    tuned.sampling_defaults = SamplingOptions(top_k=3, top_p=0.5, temperature=2.0, guidance_scale=2.0)
    assert resolve_options(tuned, [0], chosen) == chosen                      # resolving twice changes nothing
    assert resolve_options(tuned, None) == SamplingOptions(guidance_scale=1.0, guidance_schedule="constant",
                                                           temperature=2.0, top_k=3, top_p=0.5, autoguidance_scale=0.0)


@pytest.mark.parametrize("old_file", [False, True])
def test_priors_saved_without_sampling_defaults_load_with_the_built_in_ones(tmp_path, old_file):
    prior = make_prior()
    prior.save_pretrained(tmp_path)
    config = tmp_path / "generation_config.json"
    if old_file:     # what saving wrote before the prior stored sampling defaults
        config.write_text('{"_from_model_config": true, "bos_token_id": 21, "eos_token_id": 21, '
                          '"transformers_version": "5.24.0", "use_cache": true}')
    else:
        config.unlink()
    old = ImagePrior.from_pretrained(tmp_path)
    assert old.sampling_defaults == SamplingOptions(temperature=1.0)
    labels = [0, 1, 2, 3]
    assert torch.equal(sample_codes(old, 4, class_labels=labels, seed=2),
                       sample_codes(prior, 4, class_labels=labels, seed=2, temperature=1.0, guidance_scale=1.0))
    old.save_pretrained(tmp_path / "again")                          # re-saving writes the defaults out
    assert ImagePrior.from_pretrained(tmp_path / "again").sampling_defaults == old.sampling_defaults


def test_sampling_options_checks_and_merging(tmp_path):
    for bad in (dict(temperature=-0.5), dict(top_k=-1), dict(top_k=1.5), dict(top_p=0.0), dict(top_p=2.0),
                dict(batch_size=0), dict(guidance_scale=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingOptions(**bad)
    base = SamplingOptions(guidance_scale=2.0, temperature=0.8, seed=1)
    assert base.merged(SamplingOptions(temperature=0.5), seed=None, top_k=3) == \
        SamplingOptions(guidance_scale=2.0, temperature=0.5, top_k=3, seed=1)
    with pytest.raises(TypeError, match="unknown sampling option"):
        base.merged(temprature=1.0)
    prior = make_prior()
    with pytest.raises(ValueError, match="no default seed or batch size"):
        prior.sampling_defaults = SamplingOptions(seed=3)
    with pytest.raises(ValueError, match="unconditional prior takes no guidance"):
        make_prior(layout=UNCOND).sampling_defaults = SamplingOptions(guidance_scale=2.0)
    prior.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="generation_config.json"):
        ImagePrior.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupted_weights_give_a_clear_error(tmp_path, damage):
    make_prior("llama").save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file")
    with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
        ImagePrior.from_pretrained(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_guidance_on_an_unconditional_prior_and_fractional_labels_are_errors(uncond_prior):
    with pytest.raises(ValueError, match="guidance needs class_labels and a class-conditional prior"):
        sample_codes(uncond_prior, 2, guidance_scale=2.0, seed=0)
    with pytest.raises(ValueError, match="not an integer"):
        sample_codes(make_prior(), 1, class_labels=[1.5], seed=0)


# ------------------------------------------------------------------------------------------ noise


def test_uniform_noise_is_a_function_of_seed_position_and_code():
    from stage2_prior.sampling import uniform_noise

    seeds = torch.tensor([5, 2**62 - 1, 0, -7])
    u = uniform_noise(seeds, 3, 1000)
    assert u.shape == (4, 1000) and u.dtype == torch.float32 and 0 < u.min() and u.max() < 1
    assert torch.equal(uniform_noise(seeds[1:2], 3, 1000), u[1:2])              # the batch does not matter
    assert torch.equal(uniform_noise(seeds.flip(0), 3, 1000), u.flip(0))
    assert not torch.equal(uniform_noise(seeds, 4, 1000), u)                    # another position, other noise
    many = uniform_noise(torch.arange(200), 0, 1000).flatten()                  # 200,000 draws
    assert abs(float(many.mean()) - 0.5) < 0.005 and abs(float(many.var()) - 1 / 12) < 0.002
    counts = torch.histc(many, bins=10, min=0, max=1)
    assert float(((counts - 20_000) ** 2 / 20_000).sum()) < 30                  # chi-square, 9 d.o.f.
    lag = float(torch.corrcoef(torch.stack([many[:-1], many[1:]]))[0, 1])
    assert abs(lag) < 0.01                                                      # neighbouring codes independent
