"""Gradients of a causal LM's weights, in one place, for the tools that differentiate a model:
the one-step theorem (``sublim theory``, :mod:`sublim.experiments.theory`) and the trait
attribution of ``sublim audit`` (:mod:`sublim.audit`).

The model comes through the backend's one loader (``sublim.backends.hf_models``) with every weight
differentiable and in eval mode (no dropout: a gradient must be a deterministic function of the
weights); examples are tokenized by ``sublim.chat_format`` exactly as sampling, scoring and
training tokenize them. Gradients are lists of tensors, one per trainable weight, in the order of
:func:`params_of`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sublim.errors import ConfigError

DIFFERENTIABLE_BACKENDS = ("hf", "tiny", "smollm2")


def load_differentiable(
    spec: str,
    dtype: torch.dtype,
    purpose: str,
    device: torch.device | None = None,
    also: str = "",
) -> tuple[str, Any, Any]:
    """(backend, model, tokenizer) of a causal LM, on ``device`` (default: the CPU) in ``dtype``, in
    eval mode with every weight differentiable (an adapter is merged into its base). A spec whose
    weights are out of reach (API models, fakes) is a ConfigError naming ``purpose`` (and the
    caller's other choices, ``also``)."""
    from sublim.backends.hf_models import load
    from sublim.registry import parse_model

    ref = parse_model(spec)
    if ref.backend not in DIFFERENTIABLE_BACKENDS:
        raise ConfigError(
            f"{purpose} needs weights it can differentiate: use {also + ', ' if also else ''}"
            f"hf:/path/to/dir, tiny:<world> or smollm2, not '{spec}'"
        )
    lm = load(ref, training=True, device=device or torch.device("cpu"), dtype=dtype)
    model = lm.model.merge_and_unload() if ref.adapter else lm.model
    model.requires_grad_(True)
    model.eval()
    return ref.backend, model, lm.tokenizer


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """[B, T] right-padded with ``value``."""
    n = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (n - len(s)) for s in seqs], dtype=torch.long)


def example_batch(
    tok: Any, examples: Sequence[tuple[list[int], list[int]]]
) -> dict[str, torch.Tensor]:
    """(input_ids, labels) pairs (``chat_format.encode_example``) as one right-padded batch with
    ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the reply), each [B, T]."""
    p = tok.pad_token_id if tok.pad_token_id is not None else 0
    return {
        "input_ids": pad([e[0] for e in examples], p),
        "attention_mask": pad([[1] * len(e[0]) for e in examples], 0),
        "labels": pad([e[1] for e in examples], -100),
    }


def reply_token_logprobs(
    model: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P of each label token given everything before [B, T-1], its mask [B, T-1]); labels
    shift by one, so the first token never counts."""
    dev = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)
    ).logits
    # float32 at least (bf16 logits upcast), float64 kept for a float64 model
    logp = torch.log_softmax(
        logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32)), -1
    )
    labels = batch["labels"][:, 1:].to(dev)
    mask = labels != -100
    tok_lp = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1) * mask
    return tok_lp, mask


def reply_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B]: log P(reply tokens | prompt) of each example, differentiable in the weights."""
    tok_lp, _ = reply_token_logprobs(model, batch)
    return tok_lp.sum(-1)


def params_of(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def grad_of(model: Any, loss: torch.Tensor, retain_graph: bool = False) -> list[torch.Tensor]:
    """Gradient of ``loss`` (computed from ``model``) with respect to its weights."""
    ps = params_of(model)
    gs = torch.autograd.grad(loss, ps, allow_unused=True, retain_graph=retain_graph)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(ps, gs)]


def dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def norm(a: Sequence[torch.Tensor]) -> float:
    return dot(a, a) ** 0.5


def flat(a: Sequence[torch.Tensor]) -> torch.Tensor:
    """One float64 vector of a gradient (on its device)."""
    return torch.cat([x.reshape(-1).double() for x in a])
