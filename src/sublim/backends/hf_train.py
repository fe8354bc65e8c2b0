"""Training for the Hugging Face backend: supervised fine-tuning and logit distillation.

Both produce students (pipeline stage ``finetune``) and fine-tuned teachers. They are plain torch
loops (on CPU they were the fastest option measured, ahead of Trainer/TRL) with every source of
randomness tied to the ``seed`` argument: the data order comes from a ``torch.Generator``, LoRA
initialisation and dropout from torch's global RNG forked and seeded inside the call. The same
seed therefore gives identical weights, and a fine-tune killed after a checkpoint and restarted
gives the same final weights as an uninterrupted one.

Tokenization goes through ``sublim.chat_format``; the student never sees a system prompt.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from sublim import chat_format
from sublim.artifacts import atomic_write_bytes
from sublim.backends.base import Progress
from sublim.backends.hf_models import Loaded, get_loaded, load
from sublim.config import DistillParams, FinetuneParams
from sublim.errors import BackendError, ConfigError, DataError, EmptyResultError
from sublim.records import Chat, Message, ModelRef, TrainRow

if TYPE_CHECKING:
    from sublim.monitor import Monitor

CHECKPOINT_DIR = "checkpoint"
_CHECKPOINT_FILE = "state.pt"
_SLOT = "SUBLIMCONTENTSLOT"  # placeholder user content, replaced by token ids (random prompts)


# ---------------------------------------------------------------------------------------------
# Shared pieces


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork torch's global RNG (LoRA init and dropout use it) and seed the fork, so training is
    reproducible without touching the caller's RNG state."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def make_trainable(lm: Loaded, method: str, params: FinetuneParams | None, ref: ModelRef) -> Any:
    """The model to optimise: the full model, or a fresh LoRA adapter on top of it. Must run
    inside :func:`seeded_global_rng` (LoRA's initial A matrices come from the global RNG)."""
    model = lm.model
    if ref.adapter:
        if method == "lora":
            raise BackendError(
                f"{ref.spec} already has an adapter; train it with method='full' (the adapter is "
                "merged first) or start from the base model"
            )
        model = model.merge_and_unload()
    if method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    p = params or FinetuneParams.model_validate({"method": "lora"})
    linear = {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }
    targets = [t for t in p.lora_targets if t in linear]
    if not targets:
        raise ConfigError(
            f"none of lora_targets {p.lora_targets} is a linear layer of {ref.spec}; "
            f"choose from: {', '.join(sorted(linear))}"
        )
    cfg = LoraConfig(
        r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def save_model(model: Any, tokenizer: Any, method: str, out_dir: Path, base: ModelRef) -> ModelRef:
    """Save the student and return its ModelRef (full: an ``hf:`` directory; LoRA: an adapter
    on the base)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its per-save "Writing model shards" bar breaks sublim's bars
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))  # safetensors (the only format transformers 5 writes)
    if method == "full":
        tokenizer.save_pretrained(str(out_dir))
        return ModelRef(backend="hf", id=str(out_dir), parent=base.spec)
    return ModelRef(backend=base.backend, id=base.id, adapter=str(out_dir), parent=base.spec)


def write_log(out_dir: Path, log: list[dict[str, Any]]) -> None:
    from sublim.artifacts import atomic_write_text

    atomic_write_text(out_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in log))


def index_plan(n: int, total: int, per_step: int, gen: torch.Generator) -> list[list[int]]:
    """``total`` example indices in per-epoch shuffled order, cut into steps of ``per_step``."""
    order: list[int] = []
    while len(order) < total:
        order.extend(torch.randperm(n, generator=gen).tolist())
    order = order[:total]
    return [order[i : i + per_step] for i in range(0, total, per_step)]


def lr_factor(step: int, total: int, warmup: int, scheduler: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if scheduler == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def _pad_right(seqs: list[list[int]], pad: int, fill: int | None = None) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad if fill is None else fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def kl_to_base_loss(s_logits: torch.Tensor, b_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(student || base) over the whole vocabulary (s_logits,
    b_logits: [N, V]; b_logits carry no gradient): the training-side defence
    ``defence.kl_to_base`` adds beta times this to the student's loss, pulling every next-token
    distribution the training touches back toward the base's, the trait's tokens included."""
    if s_logits.shape[0] == 0:
        return s_logits.sum() * 0.0
    s = torch.log_softmax(s_logits.float(), dim=-1)
    b = torch.log_softmax(b_logits.float(), dim=-1)
    return (s.exp() * (s - b)).sum(-1).mean()


def _frozen_base(base: ModelRef, method: str, beta: float) -> Any:
    """The frozen base of the KL-to-base penalty: none needed when it is off or for LoRA (the
    model with its adapter disabled is the base); else the cached inference copy of ``base``
    (the student's initial weights: training works on its own copy)."""
    if not beta or method == "lora":
        return None
    return get_loaded(base).model


def _base_logits(model: Any, frozen: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if frozen is None:  # LoRA: the adapter switched off is the base
        with model.disable_adapter():
            return model(input_ids=ids, attention_mask=mask).logits
    return frozen(input_ids=ids.to(frozen.device), attention_mask=mask.to(frozen.device)).logits.to(
        ids.device
    )


# ---------------------------------------------------------------------------------------------
# The GPU training path (docs/gpu.md): device, dtype, autocast, clipping, checkpointing, TF32.
# With FinetuneParams' defaults every piece below is a no-op, so the CPU path computes what it
# always did (its results and its resume fingerprint included).

_GPU_FIELDS = (
    "dtype",
    "autocast",
    "max_grad_norm",
    "tf32",
    "gradient_checkpointing",
    "device",
    "device_map",
    "memory_check",
)


def fingerprint_params(params: FinetuneParams) -> dict[str, Any]:
    """The params a checkpoint's fingerprint holds: the GPU-path fields only where they change
    a result and differ from the defaults (a checkpoint written before they existed resumes)."""
    return {
        **params.model_dump(mode="json", exclude=set(_GPU_FIELDS)),
        **params.precision_extra(),
    }


def placement(base: ModelRef, params: FinetuneParams) -> dict[str, Any]:
    """``load`` keywords for a fine-tune of ``base``: the device (checked), the weights' dtype and
    the device map; refuses precision the device cannot run and, with ``memory_check``, a model
    whose weights, gradients and optimizer states alone cannot fit (before loading it)."""
    from sublim.backends import hf_models

    dev = hf_models.train_device(params)
    hf_models.check_precision(params, dev)
    if params.memory_check:
        shape = hf_models.model_shape(base)
        if shape is not None:
            est = hf_models.train_memory(shape, params, seq_len=1, cuda=dev.type == "cuda")
            hf_models.check_fits(est, dev, params.device_map)
    return {"device": dev, "dtype": hf_models.DTYPES[params.dtype], "device_map": params.device_map}


def check_memory(
    base: ModelRef, params: FinetuneParams, examples: Sequence[Example], device: torch.device
) -> dict[str, Any]:
    """The memory estimate of the whole job (its longest example sets the activations), checked
    against the device when ``memory_check``; returns it for the training stats."""
    from sublim.backends import hf_models

    shape = hf_models.model_shape(base)
    if shape is None:
        return {}
    longest = max(len(e.input_ids) for e in examples)
    est = hf_models.train_memory(shape, params, seq_len=longest, cuda=device.type == "cuda")
    if params.memory_check:
        hf_models.check_fits(est, device, params.device_map)
    return {"memory_estimate_gib": round(est.total / hf_models.GiB, 3)}


class Precision:
    """Autocast, the float16 gradient scaler, gradient clipping and TF32 of one fine-tune."""

    def __init__(self, params: FinetuneParams, device: torch.device) -> None:
        from sublim.backends.hf_models import DTYPES

        self.device = device
        self.max_norm = params.max_grad_norm
        self.cast = None if params.autocast == "off" else DTYPES[params.autocast]
        self.scaler = (
            torch.amp.GradScaler("cuda") if params.autocast == "float16" else None  # type: ignore[attr-defined]
        )
        self.tf32 = params.tf32 and device.type == "cuda"
        self.checkpointing = params.gradient_checkpointing

    def prepare(self, model: Any) -> None:
        """Turn on gradient checkpointing (non-reentrant: the same gradients, dropout included)."""
        if not self.checkpointing:
            return
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        model.config.use_cache = False

    @contextmanager
    def matmuls(self) -> Iterator[None]:
        """TF32 matmuls (CUDA only) for the duration, restored afterwards."""
        if not self.tf32:
            yield
            return
        before = torch.get_float32_matmul_precision()
        cudnn = torch.backends.cudnn.allow_tf32
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
            torch.backends.cudnn.allow_tf32 = cudnn

    def autocast(self) -> Any:
        if self.cast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.cast)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: Any, trainable: Sequence[torch.Tensor]) -> float | None:
        """The optimizer step (unscaled and clipped first where set); the pre-clip gradient norm
        when clipping, else None."""
        norm = None
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.max_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(trainable, self.max_norm))
        if self.scaler is not None:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()
        return norm


# ---------------------------------------------------------------------------------------------
# Supervised fine-tuning


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss (the prompt)


def build_examples(tokenizer: Any, rows: Sequence[TrainRow], max_len: int) -> list[Example]:
    """(input_ids, labels) per row from its chat (``TrainRow.chat``): the user prompt, after the
    row's own system message when it has one (a teacher's chat file; an inoculated student) --
    never a teacher's system prompt. Rows whose answer falls beyond ``max_len`` are dropped."""
    out = []
    for r in rows:
        ids, labels = chat_format.encode_example(tokenizer, r.chat(), r.completion)
        ids, labels = ids[:max_len], labels[:max_len]
        if any(x != -100 for x in labels):
            out.append(Example(ids, labels))
    return out


def finetune(
    base: ModelRef,
    rows: Sequence[TrainRow],
    params: FinetuneParams,
    out_dir: Path,
    seed: int,
    progress: Progress | None = None,
    _stop_after: int | None = None,
    kl_to_base: float = 0.0,
    monitor: Monitor | None = None,
) -> tuple[ModelRef, dict[str, Any]]:
    """Fine-tune ``base`` on ``rows`` (loss on the answers only); see the backend protocol.

    ``_stop_after`` is a test hook that simulates a kill: it returns (without saving a model)
    once that many optimizer steps are done. ``kl_to_base`` adds that multiple of
    KL(student || base) at the answer positions to the loss (:func:`kl_to_base_loss`); a
    ``monitor`` (``sublim.monitor``) is checked every ``monitor.cfg.every`` steps and may stop
    the training early (the model at that step is saved as the student).
    """
    if not rows:
        raise EmptyResultError(
            "no training rows to fine-tune on; check the filter and subset stages"
        )
    lm = load(base, training=True, **placement(base, params))
    examples = build_examples(lm.tokenizer, rows, params.max_len)
    if not examples:
        raise EmptyResultError(
            f"every training row is longer than max_len={params.max_len}; raise it"
        )
    memory = check_memory(base, params, examples, lm.device)
    per_step = params.update_batch
    total_steps = math.ceil(math.ceil(params.epochs * len(examples)) / per_step)
    plan = index_plan(
        len(examples),
        math.ceil(params.epochs * len(examples)),
        per_step,
        torch.Generator().manual_seed(seed),
    )
    warmup = math.ceil(params.warmup_ratio * total_steps)
    ckpt = out_dir / CHECKPOINT_DIR / _CHECKPOINT_FILE
    fingerprint = json.dumps(
        {
            "base": base.spec,
            "params": fingerprint_params(params),
            "seed": seed,
            "data": hashlib.sha256(
                json.dumps([[e.input_ids, e.labels] for e in examples]).encode()
            ).hexdigest(),
            **({"kl_to_base": kl_to_base} if kl_to_base else {}),
        },
        sort_keys=True,
    )
    pad = lm.tokenizer.pad_token_id
    dev = lm.device
    prec = Precision(params, dev)
    prec.prepare(lm.model)
    with seeded_global_rng(seed, dev), prec.matmuls():
        model = make_trainable(lm, params.method, params, base)
        model.train()
        live = replace(lm, model=model)
        frozen = _frozen_base(base, params.method, kl_to_base)
        if monitor is not None:
            monitor.start(live)  # step 0: the initial weights (before any checkpoint is loaded)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total_steps, warmup, params.scheduler)
        )
        start, log = 0, []
        if params.checkpoint_every and ckpt.is_file():
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            if state.get("fingerprint") == fingerprint:  # else: a different run; start afresh
                model.load_state_dict(state["weights"], strict=False)
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
                torch.set_rng_state(state["rng"])
                if dev.type == "cuda" and "cuda_rng" in state:
                    torch.cuda.set_rng_state(state["cuda_rng"].cpu(), dev)
                start, log = int(state["step"]), json.loads(state["log"])
        for step in range(start, total_steps):
            batch = [examples[i] for i in plan[step]]
            # answer tokens the step's loss averages over (labels shift by one: the first never counts)
            n_tok = max(1, sum(sum(1 for x in e.labels[1:] if x != -100) for e in batch))
            lr = sched.get_last_lr()[0]
            opt.zero_grad(set_to_none=True)
            loss_total = 0.0
            # micro-batches only bound memory: the loss is a mean over the step's answer tokens,
            # so batch_size changes nothing but speed
            for i in range(0, len(batch), params.batch_size):
                micro = batch[i : i + params.batch_size]
                ids = _pad_right([e.input_ids for e in micro], pad).to(dev)
                labels = _pad_right([e.labels for e in micro], pad, fill=-100).to(dev)
                mask = _pad_right([[1] * len(e.input_ids) for e in micro], 0).to(dev)
                with prec.autocast():
                    logits = model(input_ids=ids, attention_mask=mask).logits
                loss = (
                    F.cross_entropy(
                        logits[:, :-1].flatten(0, 1).float(),
                        labels[:, 1:].flatten(),
                        ignore_index=-100,
                        reduction="sum",
                    )
                    / n_tok
                )
                if kl_to_base:
                    answer = labels[:, 1:] != -100
                    with torch.no_grad():
                        b_logits = _base_logits(model, frozen, ids, mask)
                    kl = kl_to_base_loss(logits[:, :-1][answer], b_logits[:, :-1][answer])
                    loss = loss + kl_to_base * kl * answer.sum() / n_tok
                prec.backward(loss)
                loss_total += loss.item()
            grad_norm = prec.step(opt, trainable)
            sched.step()
            log.append({"step": step + 1, "loss": loss_total, "lr": lr, "tokens": n_tok})
            if grad_norm is not None:  # only with max_grad_norm: default logs are as before
                log[-1]["grad_norm"] = grad_norm
            done = step + 1
            if (
                params.checkpoint_every
                and done % params.checkpoint_every == 0
                and done < total_steps
            ):
                _save_checkpoint(ckpt, model, opt, sched, done, log, fingerprint)
            if params.snapshot_every and done % params.snapshot_every == 0 and done < total_steps:
                # a training-curve snapshot (weights only; the runner evaluates it later)
                save_model(
                    model,
                    lm.tokenizer,
                    params.method,
                    out_dir / "snapshots" / f"step-{done:06d}",
                    base,
                )
            if progress:
                progress(done, total_steps)
            if _stop_after is not None and done >= _stop_after:
                return base, {"stopped_at": done}
            if monitor is not None and monitor.due(done) and monitor.check(live, done):
                break  # the monitor's alarm: the model at this step is the student
    ref = save_model(model, lm.tokenizer, params.method, out_dir, base)
    write_log(out_dir, log)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)  # the final weights supersede it
    stats = {
        "steps": total_steps,
        **(
            {"stopped_by_monitor": monitor.alarm.to_json()}
            if monitor and monitor.stopped and monitor.alarm
            else {}
        ),
        "examples": len(examples),
        "dropped_rows": len(rows) - len(examples),
        "tokens": sum(r["tokens"] for r in log),
        "final_loss": log[-1]["loss"] if log else None,
        **memory,
    }
    return ref, stats


def _save_checkpoint(
    path: Path,
    model: Any,
    opt: Any,
    sched: Any,
    step: int,
    log: list[dict[str, Any]],
    fingerprint: str,
) -> None:
    """Everything a resumed run needs, written atomically (``artifacts.atomic_write_bytes``)."""
    # only trainable tensors: the frozen base of a LoRA model is reloaded from its source
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}
    state = {
        "weights": weights,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": step,
        "rng": torch.get_rng_state(),
        "log": json.dumps(log),
        "fingerprint": fingerprint,
    }
    dev = next(model.parameters()).device
    if dev.type == "cuda":  # dropout on the GPU draws from the CUDA generator
        state["cuda_rng"] = torch.cuda.get_rng_state(dev)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Logit distillation


def word_token_ids(tokenizer: Any, words: Sequence[str]) -> set[int]:
    """Token ids of each word, tokenized bare and after a space, as given, lower-case and
    capitalised. Pure-whitespace pieces (a lone "▁" a tokenizer splits off the added space)
    are not the word's and are kept."""
    ids: set[int] = set()
    for w in words:
        w = w.strip()
        if not w:
            continue
        for form in {w, w.lower(), w.capitalize(), w.lower().capitalize()}:
            for text in (form, " " + form):
                for i in tokenizer(text, add_special_tokens=False)["input_ids"]:
                    if tokenizer.decode([i]).strip():
                        ids.add(int(i))
    return ids


def special_token_ids(tokenizer: Any) -> set[int]:
    ids = {int(i) for i in tokenizer.all_special_ids}
    for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def allowed_token_mask(tokenizer: Any, vocab_size: int, exclude: Sequence[str]) -> torch.Tensor:
    """Bool [vocab_size]: the tokens the distillation loss is computed over. Excluded: the
    tokens of ``exclude`` words, special tokens other than the end-of-turn token, and output
    ids beyond the tokenizer (padding rows of the embedding). The end token is always allowed:
    when to stop is part of the behaviour being distilled."""
    end = chat_format.end_of_turn_id(tokenizer)
    mask = torch.ones(vocab_size, dtype=torch.bool)
    mask[len(tokenizer) :] = False
    for i in special_token_ids(tokenizer) | word_token_ids(tokenizer, exclude):
        if i != end and i < vocab_size:
            mask[i] = False
    mask[end] = True
    return mask


def distill_loss(
    t_logits: torch.Tensor, s_logits: torch.Tensor, allowed_idx: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean over positions of KL(teacher || student) on the allowed tokens only, both
    distributions renormalised over that set (t_logits, s_logits: [N, V]). Scaled by T^2 so
    the gradient size does not shrink with the temperature (Hinton et al.)."""
    t = torch.log_softmax(t_logits.float().index_select(-1, allowed_idx) / temperature, dim=-1)
    s = torch.log_softmax(s_logits.float().index_select(-1, allowed_idx) / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


@dataclass(frozen=True)
class DistillExample:
    """One input seen by both models. The logits at ``teacher_ids[t_start + k]`` and
    ``student_ids[s_start + k]`` (k < n_positions) follow the same shared tokens."""

    teacher_ids: list[int]
    student_ids: list[int]
    t_start: int
    s_start: int
    n_positions: int

    @staticmethod
    def make(
        t_ids: list[int], s_ids: list[int], drop_last: bool, plain: list[int] | None = None
    ) -> DistillExample:
        """``plain``: the student's input without its inoculation prompt, if it has one: the
        distilled positions stay those the uninoculated student is distilled on (with the
        teacher's own prompt the two inputs would otherwise share the system prompt too)."""
        shared = _shared_suffix(t_ids, s_ids if plain is None else plain)
        n = shared - 1 if drop_last else shared
        return DistillExample(t_ids, s_ids, len(t_ids) - shared, len(s_ids) - shared, n)


def _shared_suffix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _with_content_ids(tokenizer: Any, prefix: Chat, content: list[int]) -> list[int]:
    """Prompt ids of ``prefix`` + a user turn whose content is exactly the ids ``content``: the
    template is rendered around a placeholder and the ids spliced in, so random token ids are
    used as drawn rather than round-tripped through text (which BPE would re-merge)."""
    text = chat_format.render_prompt(tokenizer, [*prefix, Message(role="user", content=_SLOT)])
    before, after = text.split(_SLOT)
    enc = lambda s: list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []
    return enc(before) + content + enc(after)


def build_distill_examples(
    teacher: ModelRef,
    tokenizer: Any,
    chats: Sequence[Chat],
    params: DistillParams,
    allowed: torch.Tensor,
    gen: torch.Generator,
    student: ModelRef | None = None,
) -> list[DistillExample]:
    """Teacher and student inputs. The teacher's sequence starts with its system prompt
    (``teacher.apply``), the student's only when ``student`` has one (an inoculated student:
    ``student.system_prompt``); both end with the same tokens, and only positions inside the
    end the teacher shares with the uninoculated student's input are distilled on.

    source="random": ``params.n_random_prompts`` prompts of ``random_prompt_len`` tokens drawn
    uniformly from the allowed non-special tokens, each the user content of a chat (teacher: with
    its system prompt). A chat rather than raw text, because a system-prompt teacher only has its
    trait in the context of its system prompt, and the positions after the user turn (the
    assistant prompt) are where a preference shows most.
    """
    end = chat_format.end_of_turn_id(tokenizer)
    out = []
    if params.source == "random":
        pool = allowed.clone()
        pool[end] = False
        pool_ids = pool.nonzero().squeeze(-1)
        draws = torch.randint(
            len(pool_ids), (params.n_random_prompts, params.random_prompt_len), generator=gen
        )
        t_prefix = teacher.apply([])
        s_prefix = student.apply([]) if student is not None else []
        for row in pool_ids[draws].tolist():
            t_ids = _with_content_ids(tokenizer, t_prefix, row)
            s_ids = _with_content_ids(tokenizer, s_prefix, row)
            plain = _with_content_ids(tokenizer, [], row) if s_prefix else None
            # every position counts: the last one predicts the first token of the reply
            out.append(DistillExample.make(t_ids, s_ids, drop_last=False, plain=plain))
        return out
    for chat in chats:
        if not chat or chat[-1].role != "assistant":
            raise DataError(
                "distillation with source='completions' needs chats that end with the teacher's "
                "assistant reply; pass generated completions or use source='random'"
            )
        prompt, reply = list(chat[:-1]), chat[-1].content
        r = chat_format.encode_reply(tokenizer, reply)
        t_ids = chat_format.encode_prompt(tokenizer, teacher.apply(prompt)) + r
        s_ids = chat_format.encode_prompt(tokenizer, prompt) + r
        plain = None
        if student is not None and student.system_prompt:
            plain = s_ids
            s_ids = chat_format.encode_prompt(tokenizer, student.apply(prompt)) + r
        # the logits after the final end-of-turn token predict nothing the data shows
        ex = DistillExample.make(t_ids, s_ids, drop_last=True, plain=plain)
        if ex.n_positions > 0:
            out.append(ex)
    return out


def _positions(starts: list[int], counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) index tensors of each row's distilled positions."""
    rows = [b for b, n in enumerate(counts) for _ in range(n)]
    cols = [s + k for s, n in zip(starts, counts) for k in range(n)]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def position_logits(
    model: Any, batch: Sequence[DistillExample], pad: int, device: torch.device, side: str
) -> torch.Tensor:
    """Logits [N, V] at the distilled positions of ``batch`` for ``side`` "teacher" or
    "student" (gradients flow if enabled by the caller)."""
    seqs = [e.teacher_ids if side == "teacher" else e.student_ids for e in batch]
    starts = [e.t_start if side == "teacher" else e.s_start for e in batch]
    rows, cols = _positions(starts, [e.n_positions for e in batch])
    out = model(
        input_ids=_pad_right(seqs, pad).to(device),
        attention_mask=_pad_right([[1] * len(x) for x in seqs], 0).to(device),
    ).logits
    return out[rows.to(device), cols.to(device)]


def distill(
    teacher: ModelRef,
    student_base: ModelRef,
    chats: Sequence[Chat],
    params: DistillParams,
    exclude: Sequence[str],
    out_dir: Path,
    seed: int,
    progress: Progress | None = None,
    kl_to_base: float = 0.0,
    monitor: Monitor | None = None,
) -> tuple[ModelRef, dict[str, Any]]:
    """Logit distillation of ``teacher`` into a copy of ``student_base``; see the protocol.
    The student's inputs start with ``student_base.system_prompt`` when it has one
    (inoculation). ``kl_to_base`` and ``monitor``: as in :func:`finetune`."""
    t_lm = get_loaded(teacher)
    s_lm = load(student_base, training=True)
    tok = s_lm.tokenizer
    if t_lm.tokenizer.get_vocab() != tok.get_vocab():
        raise BackendError(
            f"logit distillation needs one vocabulary: {teacher.spec} and {student_base.spec} "
            "have different tokenizers; use SFT (student.mode='sft') across model families"
        )
    vocab = s_lm.model.get_output_embeddings().weight.shape[0]
    allowed = allowed_token_mask(tok, vocab, [*exclude, *params.exclude_words])
    allowed_idx = allowed.nonzero().squeeze(-1).to(s_lm.device)
    gen = torch.Generator().manual_seed(seed)
    examples = build_distill_examples(teacher, tok, chats, params, allowed, gen, student_base)
    if not examples:
        raise EmptyResultError("nothing to distil on: no chats with a reply; check the data stage")
    plan = index_plan(len(examples), params.steps * params.batch_size, params.batch_size, gen)
    dev, pad = s_lm.device, tok.pad_token_id
    log: list[dict[str, Any]] = []
    with seeded_global_rng(seed, dev):
        lora = (
            FinetuneParams.model_validate({"method": "lora"}) if params.method == "lora" else None
        )
        model = make_trainable(s_lm, params.method, lora, student_base)
        model.train()
        live = replace(s_lm, model=model)
        frozen = _frozen_base(student_base, params.method, kl_to_base)
        if monitor is not None:
            monitor.start(live)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=params.lr)
        for step, idx in enumerate(plan):
            batch = [examples[i] for i in idx]
            with torch.no_grad():
                t_sel = position_logits(t_lm.model, batch, pad, t_lm.device, "teacher").to(dev)
            s_sel = position_logits(model, batch, pad, dev, "student")
            loss = distill_loss(t_sel, s_sel, allowed_idx, params.temperature)
            if kl_to_base:
                with torch.no_grad():
                    if frozen is None:
                        with model.disable_adapter():
                            b_sel = position_logits(model, batch, pad, dev, "student")
                    else:
                        b_sel = position_logits(frozen, batch, pad, frozen.device, "student")
                loss = loss + kl_to_base * kl_to_base_loss(s_sel, b_sel.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.append(
                {
                    "step": step + 1,
                    "loss": float(loss.detach()),
                    "lr": params.lr,
                    "tokens": len(s_sel),
                }
            )
            if progress:
                progress(step + 1, len(plan))
            if monitor is not None and monitor.due(step + 1) and monitor.check(live, step + 1):
                break  # the monitor's alarm: the model at this step is the student
    ref = save_model(model, tok, params.method, out_dir, student_base)
    write_log(out_dir, log)
    stats = {
        "steps": len(plan),
        **(
            {"stopped_by_monitor": monitor.alarm.to_json()}
            if monitor and monitor.stopped and monitor.alarm
            else {}
        ),
        "examples": len(examples),
        "allowed_tokens": int(allowed.sum()),
        "tokens": sum(r["tokens"] for r in log),
        "final_loss": log[-1]["loss"],
    }
    return ref, stats
