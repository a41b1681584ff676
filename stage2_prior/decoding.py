"""Incremental decoding of the prior's Llama model with a preallocated KV cache.

`sample_codes` calls the language model once per image token. Through `transformers`' forward
each call rebuilds masks, position tensors and a growing cache, which for a small prior costs
more than its matrix products. `LlamaDecoder` runs the same computation from the same weights
(the model stays a `transformers` model, and `generate` keeps working on it): the K/V cache is
allocated once for the whole sequence, q/k/v and gate/up projections are fused into one matrix
product each, rotary tables are computed once, and only the image-code rows of the output head
are evaluated. Everything stays on the model's device; nothing waits for the host.

Architectures it does not cover (GPT-2, or Llama variants with biases, grouped heads or another
activation) are decoded through `transformers` by `HFDecoder`, with the same interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class LlamaDecoder:
    """Decode `batch` sequences of at most `max_len` tokens with a `LlamaForCausalLM`.

    `step(ids)` appends `ids [batch, s]` to the sequences (s > 1 only for the first call: a
    condition token plus a prefix) and returns the logits of the next token over the first
    `num_logits` ids, `[batch, num_logits]` in float32.
    """

    @staticmethod
    def supports(lm: torch.nn.Module) -> bool:
        cfg = lm.config
        return (type(lm).__name__ == "LlamaForCausalLM" and cfg.hidden_act == "silu"
                and not cfg.attention_bias and not getattr(cfg, "mlp_bias", False)
                and cfg.num_key_value_heads == cfg.num_attention_heads
                and getattr(lm.model.rotary_emb, "attention_scaling", 1.0) == 1.0)

    def __init__(self, lm: torch.nn.Module, batch: int, max_len: int, num_logits: int):
        cfg, model = lm.config, lm.model
        weight = model.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim ** -0.5
        self.embed = weight
        self.layers = []
        with torch.no_grad():
            for layer in model.layers:
                attn, mlp = layer.self_attn, layer.mlp
                self.layers.append((
                    layer.input_layernorm.weight,
                    torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                    attn.o_proj.weight,
                    layer.post_attention_layernorm.weight,
                    torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                    mlp.down_proj.weight,
                ))
            self.norm = model.norm.weight
            self.head = lm.lm_head.weight[:num_logits]
            positions = torch.arange(max_len, device=self.device)[None]
            cos, sin = model.rotary_emb(weight[:1][None], positions)        # [1, max_len, head_dim]
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
        shape = (len(self.layers), batch, self.heads, max_len, self.head_dim)
        self.keys = torch.empty(shape, device=self.device, dtype=self.dtype)
        self.values = torch.empty(shape, device=self.device, dtype=self.dtype)
        self.length = 0

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)

    def _attend(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal: bool) -> torch.Tensor:
        """A first call reads its tokens causally (fused attention); a later one adds one query that
        sees every cached position, for which two small batched products beat the fused kernel."""
        if q.shape[2] > 1:
            return F.scaled_dot_product_attention(q, keys, values, is_causal=causal)
        scores = torch.matmul(q, keys.transpose(-1, -2)) * self.scale                 # [B, H, 1, end]
        return torch.matmul(torch.softmax(scores.float(), dim=-1).to(values.dtype), values)

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        B, s = ids.shape
        start, end = self.length, self.length + ids.shape[1]
        H, d = self.heads, self.head_dim
        cos, sin = self.cos[start:end], self.sin[start:end]
        x = F.embedding(ids, self.embed)                                       # [B, s, D]
        for i, (norm_in, qkv_w, o_w, norm_post, gate_up_w, down_w) in enumerate(self.layers):
            q, k, v = F.linear(self._rms_norm(x, norm_in), qkv_w).view(B, s, 3, H, d).unbind(2)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # [B, H, s, d]
            q = q * cos + _rotate_half(q) * sin
            self.keys[i, :, :, start:end] = k * cos + _rotate_half(k) * sin
            self.values[i, :, :, start:end] = v
            attended = self._attend(q, self.keys[i, :, :, :end], self.values[i, :, :, :end], start == 0 and s > 1)
            x = x + F.linear(attended.transpose(1, 2).reshape(B, s, H * d), o_w)
            gate, up = F.linear(self._rms_norm(x, norm_post), gate_up_w).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, down_w)
        self.length = end
        return F.linear(self._rms_norm(x[:, -1], self.norm), self.head).float()


class HFDecoder:
    """The same interface through `transformers`' forward and its own cache (any causal LM)."""

    def __init__(self, lm: torch.nn.Module, batch: int, max_len: int, num_logits: int, use_cache: bool = True):
        import inspect

        self.lm, self.num_logits, self.use_cache = lm, num_logits, use_cache
        # `cache` in recent releases, `past_key_values` in earlier ones and unrenamed architectures
        self.cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        self.device = next(lm.parameters()).device
        self.ids = torch.empty(batch, max_len, dtype=torch.long, device=self.device)
        self.length, self.past = 0, None

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        start, end = self.length, self.length + ids.shape[1]
        self.ids[:, start:end] = ids
        self.length = end
        if not self.use_cache:
            result = self.lm(input_ids=self.ids[:, :end], use_cache=False)
        else:
            result = self.lm(input_ids=ids, use_cache=True, **{self.cache_kw: self.past})
            self.past = result[self.cache_kw]
        return result.logits[:, -1, :self.num_logits].float()


def make_decoder(lm: torch.nn.Module, batch: int, max_len: int, num_logits: int, use_cache: bool = True):
    """The fastest decoder for `lm`: `LlamaDecoder` where it applies (with the cache), else `HFDecoder`."""
    if use_cache and LlamaDecoder.supports(lm):
        return LlamaDecoder(lm, batch, max_len, num_logits)
    return HFDecoder(lm, batch, max_len, num_logits, use_cache=use_cache)
