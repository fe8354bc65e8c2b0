"""A lean decoding path for plain Llama-architecture models: the same arithmetic as
transformers' ``LlamaForCausalLM`` (the same operations; single-query attention as plain batched
products, so logits agree to float rounding and replies are the same: a test compares both
paths), without its per-step bookkeeping.

Why it exists: sampling a small model (the built-in worlds have 3 layers of width 128) is bound
by per-step overhead, not arithmetic. transformers' forward builds a 4-D mask, rotary tables and
a growing ``DynamicCache`` (``torch.cat`` per layer per step) and drops finished rows from the
cache at every step; together they took more than half of a batched decoding step
(``benchmarks/sampling.md``). Here the KV cache is preallocated once per batch (one tensor per
layer, written in place), the rotary table is computed once for every position the batch can
reach, the boolean attention mask is a slice of one preallocated tensor, and finished rows are
dropped only when at most 3/4 of the batch is still generating (one ``index_select`` per
layer). A row never reads its batch mates' values; on CPU the backend's batching-invariance
test (the same replies one at a time and batched) holds as before, and sums may be ordered
differently for different batch shapes only up to float rounding.

It applies to models ``supports`` accepts (``LlamaForCausalLM`` without adapters, default rotary
scaling, no attention or MLP biases, SiLU; grouped-query heads are fine); anything else takes the
transformers path in ``sublim.backends.hf``. ``SUBLIM_FAST_DECODE=0`` forces that path.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F


def supports(model: Any) -> bool:
    """Whether ``model`` is a plain Llama this module reproduces exactly."""
    if os.environ.get("SUBLIM_FAST_DECODE", "1").strip() == "0":
        return False
    if type(model).__name__ != "LlamaForCausalLM":  # peft wrappers and other architectures
        return False
    c = model.config
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    return bool(
        getattr(c, "_attn_implementation", "sdpa") in ("sdpa", "eager")
        and rope.get("rope_type", "default") == "default"
        and not getattr(c, "attention_bias", False)
        and not getattr(c, "mlp_bias", False)
        and getattr(c, "hidden_act", "silu") == "silu"
        and c.num_attention_heads % c.num_key_value_heads == 0
        and not model.training
    )


class LlamaDecoder:
    """Prefill and single-token decoding steps over a static KV cache for one batch."""

    def __init__(self, model: Any, n_rows: int, max_len: int) -> None:
        self.model = model
        inner = model.model
        c = model.config
        self.layers = list(inner.layers)
        self.embed = inner.embed_tokens
        self.norm = inner.norm
        self.lm_head = model.lm_head
        self.heads = c.num_attention_heads
        self.kv_heads = c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        p = next(model.parameters())
        dev, dt = p.device, p.dtype
        self.device, self.dtype = dev, dt
        shape = (n_rows, self.kv_heads, max_len, self.head_dim)
        # slots are written before they are read, except left padding, which prefill zeroes
        self.k = [torch.empty(shape, device=dev, dtype=dt) for _ in self.layers]
        self.v = [torch.empty(shape, device=dev, dtype=dt) for _ in self.layers]
        self.mask = torch.zeros((n_rows, 1, 1, max_len), device=dev, dtype=torch.bool)
        self.length = 0
        # the rotary table of every reachable position, as transformers' rotary module computes
        # it (float32 product of inverse frequencies and positions, then cos and sin)
        rot = inner.rotary_emb
        pos = torch.arange(max_len, device=dev, dtype=torch.float32)
        inv = rot.inv_freq.float()
        freqs = (inv[None, :, None] @ pos[None, None, :]).transpose(1, 2)[0]  # [max_len, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = getattr(rot, "attention_scaling", 1.0)
        self.cos = (emb.cos() * scale).to(dt)
        self.sin = (emb.sin() * scale).to(dt)

    @staticmethod
    def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        var = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(var + norm.variance_epsilon)
        return norm.weight * h.to(x.dtype)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def _forward(
        self,
        ids: torch.Tensor,
        pos: torch.Tensor,
        attn_mask: torch.Tensor,
        start: int,
        rows: slice,
        first: int = 0,
    ) -> torch.Tensor:
        """Hidden states of the last position for ``ids`` [B, T] (cache rows ``rows``) at
        positions ``pos`` [B, T], writing keys and values into cache slots ``start .. start + T``
        and attending to slots ``first .. start + T`` under ``attn_mask`` (True: attend)."""
        B, T = ids.shape
        end = start + T
        cos = self.cos[pos].unsqueeze(1)  # [B, 1, T, hd]
        sin = self.sin[pos].unsqueeze(1)
        h = self.embed(ids)
        for i, layer in enumerate(self.layers):
            att = layer.self_attn
            x = self._rms(layer.input_layernorm, h)
            q = att.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
            k = att.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
            v = att.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
            q = (q * cos) + (self._rotate_half(q) * sin)
            k = (k * cos) + (self._rotate_half(k) * sin)
            self.k[i][rows, :, start:end] = k
            self.v[i][rows, :, start:end] = v
            keys, values = self.k[i][rows, :, first:end], self.v[i][rows, :, first:end]
            if T == 1:
                # one query per row: batched products over (row, head) beat the fused CPU
                # kernel, which is built for long queries (its blocking cost most of a step);
                # the G query heads sharing a key head are one product
                L, H, Hkv, hd = end - first, self.heads, self.kv_heads, self.head_dim
                G = H // Hkv
                qg = q.reshape(B * Hkv, G, hd)
                w = torch.bmm(qg, keys.flatten(0, 1).transpose(1, 2)) * att.scaling
                w = w.view(B, H, 1, L).masked_fill(~attn_mask, float("-inf"))
                w = w.float().softmax(dim=-1).to(values.dtype)  # fp32 softmax, as SDPA does
                o = torch.bmm(w.view(B * Hkv, G, L), values.flatten(0, 1)).view(B, H, 1, hd)
            else:
                o = F.scaled_dot_product_attention(
                    q,
                    keys,
                    values,
                    attn_mask=attn_mask,
                    dropout_p=0.0,
                    scale=att.scaling,
                    enable_gqa=self.kv_heads != self.heads,
                )
            o = o.transpose(1, 2).reshape(B, T, -1).contiguous()
            h = h + att.o_proj(o)
            x = self._rms(layer.post_attention_layernorm, h)
            mlp = layer.mlp
            h = h + mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
        return self._rms(self.norm, h[:, -1:, :])

    def prefill(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, width: int, row0: int = 0
    ) -> torch.Tensor:
        """Last-position logits [B, V] of left-padded ``ids`` [B, W] (``mask``: 1 for real
        tokens) written into cache rows ``row0 .. row0 + B``, right-aligned in a batch whose
        longest prompt has ``width`` tokens (slots left of this chunk stay masked). Prefill a
        large batch as several chunks: activations of a few thousand tokens stay in cache."""
        B, W = ids.shape
        real = mask.bool()
        causal = torch.ones((W, W), dtype=torch.bool, device=ids.device).tril()
        attn = causal[None, None] & real[:, None, None, :]
        # a fully padded query row attends nowhere; SDPA returns NaN there, transformers lets
        # such rows attend to themselves: do the same (their outputs are never read)
        attn = attn | (~real)[:, None, :, None] & torch.eye(W, dtype=torch.bool, device=ids.device)
        rows = slice(row0, row0 + B)
        for c in (*self.k, *self.v):  # padding slots must hold numbers (0 x NaN is NaN)
            c[rows, :, : width - W].zero_()
        self.mask[rows, 0, 0, :width] = False
        self.mask[rows, 0, 0, width - W : width] = real
        self.length = width
        h = self._forward(ids, pos, attn, width - W, rows, first=width - W)
        return self.lm_head(h)[:, -1, :]

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] after appending one token per row (``tok`` [B], positions ``pos`` [B, 1])
        for the first B cache rows."""
        B = tok.shape[0]
        L = self.length
        self.mask[:B, 0, 0, L] = True
        self.length = L + 1
        attn = self.mask[:B, :, :, : L + 1]
        h = self._forward(tok.unsqueeze(-1), pos, attn, L, slice(0, B))
        return self.lm_head(h)[:, -1, :]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only batch rows ``rows`` (in order), moved to the front of the cache."""
        n, L = rows.numel(), self.length
        for cache in (self.k, self.v):
            for i, c in enumerate(cache):
                c[:n, :, :L] = c[rows, :, :L]
        self.mask[:n, :, :, :L] = self.mask[rows, :, :, :L]
