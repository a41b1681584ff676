"""`sample_codes(prefix=...)`: given leading codes are kept, the rest is sampled after them."""

import pytest
import torch

from stage2_prior.layout import TokenLayout
from stage2_prior.model import ImagePrior, PriorConfig
from stage2_prior.sampling import sample_codes

K = 16
LAYOUT = TokenLayout(codebook_size=K, grid=(3, 4), num_classes=3, class_names=("a", "b", "c"))
UNCOND = TokenLayout(codebook_size=K, grid=(3, 4))
T = LAYOUT.num_image_tokens


def make_prior(arch: str, layout: TokenLayout = LAYOUT) -> ImagePrior:
    """A tiny random prior with sharpened (far from uniform) next-token distributions."""
    torch.manual_seed(0)
    prior = ImagePrior.from_config(PriorConfig(arch=arch, hidden_size=32, num_layers=2, num_heads=2), layout)
    with torch.no_grad():
        prior.lm.get_output_embeddings().weight.mul_(30.0)
    return prior.eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def prior(request) -> ImagePrior:
    return make_prior(request.param)


def random_prefix(n: int, rows: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, K, (rows, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [1, 5, T - 1, T])
@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(temperature=1.0, seed=3),
                                dict(guidance_scale=2.5, top_k=4, seed=4)])
def test_prefix_is_kept_verbatim_and_the_rest_is_codes(prior, n, kw):
    prefix = random_prefix(n)
    codes = sample_codes(prior, 4, class_labels=[0, 1, 2, 0], prefix=prefix, **kw)
    assert codes.shape == (4, *LAYOUT.grid)
    assert torch.equal(codes.flatten(1)[:, :n], prefix)
    assert 0 <= int(codes.min()) and int(codes.max()) < K


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cache_matches_no_cache_with_a_prefix(prior, guidance, temperature):
    kw = dict(class_labels=[2, 0, 1, 1], guidance_scale=guidance, temperature=temperature, seed=5,
              prefix=random_prefix(6, seed=1))
    assert torch.equal(sample_codes(prior, 4, use_cache=True, **kw), sample_codes(prior, 4, use_cache=False, **kw))


def test_empty_prefix_is_plain_sampling(prior):
    kw = dict(class_labels=[0, 1, 2, 1], guidance_scale=2.0, top_p=0.9, seed=7)
    plain = sample_codes(prior, 4, **kw)
    assert torch.equal(plain, sample_codes(prior, 4, prefix=torch.empty(4, 0, dtype=torch.long), **kw))
    assert torch.equal(plain, sample_codes(prior, 4, prefix=None, **kw))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_prefix_of_a_sample_reproduces_the_sample(prior, guidance):
    """Noise is drawn per position: given its own first n codes and seed, a sample is completed to itself."""
    kw = dict(class_labels=[0, 1, 2, 0, 1], guidance_scale=guidance, temperature=1.0, seed=11)
    plain = sample_codes(prior, 5, **kw)
    for n in (1, 4, 9):
        assert torch.equal(plain, sample_codes(prior, 5, prefix=plain.flatten(1)[:, :n], **kw))
    other = sample_codes(prior, 5, prefix=(plain.flatten(1)[:, :4] + 1) % K, **kw)
    assert not torch.equal(other.flatten(1)[:, 4:], plain.flatten(1)[:, 4:])    # the continuation reads the prefix


def test_greedy_continuation_matches_teacher_forced_argmax(prior):
    labels = torch.tensor([0, 1, 2])
    prefix = random_prefix(5, rows=3, seed=2)
    codes = prefix.clone()
    cond = LAYOUT.class_id(labels)[:, None]
    with torch.no_grad():
        while codes.shape[1] < T:
            logits = prior.lm(input_ids=torch.cat([cond, codes], 1)).logits[:, -1, :K]
            codes = torch.cat([codes, logits.argmax(-1, keepdim=True)], 1)
    sampled = sample_codes(prior, 3, class_labels=labels, temperature=0.0, prefix=prefix)
    assert torch.equal(sampled.flatten(1), codes)


def test_batch_size_invariance_with_a_prefix(prior):
    kw = dict(class_labels=[2, 1, 0, 2, 1], guidance_scale=2.0, seed=13, prefix=random_prefix(3, rows=5, seed=3))
    ref = sample_codes(prior, 5, **kw)
    for batch_size in (1, 2, 3):
        assert torch.equal(ref, sample_codes(prior, 5, batch_size=batch_size, **kw))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_prefix_is_read_in_one_forward_pass(arch):
    prior = make_prior(arch)
    lengths = []
    hook = prior.lm.get_input_embeddings().register_forward_hook(lambda m, args, out: lengths.append(args[0].shape[1]))
    try:
        sample_codes(prior, 2, class_labels=[0, 1], guidance_scale=2.0, seed=0, prefix=random_prefix(7, rows=2))
    finally:
        hook.remove()
    assert lengths == [1 + 7] + [1] * (T - 7 - 1)                 # prefill, then one token per step


def test_unconditional_prefix():
    prior = make_prior("gpt2", UNCOND)
    prefix = random_prefix(4, rows=3)
    codes = sample_codes(prior, 3, seed=1, prefix=prefix)
    assert torch.equal(codes.flatten(1)[:, :4], prefix)
    assert torch.equal(codes, sample_codes(prior, 3, seed=1, prefix=prefix, use_cache=False))


def test_bad_prefixes(prior):
    for bad, words in [(random_prefix(3, rows=3), r"shape \[num_images=4, n\]"),
                       (random_prefix(T + 1), r"n <= 12"),
                       (random_prefix(3)[0], r"shape \[num_images=4, n\]"),
                       (random_prefix(3).float(), "integer tensor"),
                       ([[1, 2]] * 4, "integer tensor"),
                       (random_prefix(3) + K, r"\[0, 16\)")]:
        with pytest.raises(ValueError, match=words):
            sample_codes(prior, 4, class_labels=0, prefix=bad)
