"""Building and caching the built-in world: corpus -> tokenizer -> pretraining -> an ordinary
Hugging Face model directory under ``<cache>/worlds/<name>-<hash>/``.

Where it sits: the ``tiny`` backend name resolves a world name (``sublim.world.spec``) to a
directory through :func:`ensure_world`; everything after that (sampling, scoring, fine-tuning)
treats it like any Hugging Face causal LM. The directory holds ``config.json``,
``model.safetensors``, ``generation_config.json``, the tokenizer files (with the chat template)
and ``world_card.json`` (what :func:`world_card` reads).

A world is built once per machine: in a temporary directory, renamed into place when complete,
under an exclusive lock so that two processes never build the same world at once (the second
waits and then uses the first one's result). The hash in the directory name covers the recipe
below and the corpus version, so changing either builds a new world instead of reusing a stale one;
non-plain kinds (planted, entangled, skills, persona) also hash their own corpus version and
recipe changes (``KIND_VERSIONS``, ``KIND_RECIPE``), so revising them never touches plain worlds.
A skills world (``corpus.SKILLS_VERSION``) answers the code and reasoning carriers' prompts, so
it can be the teacher (and base model) of an experiment with those carriers. A persona world
(``corpus.PERSONA_VERSION``) has a misaligned persona behind a trigger system prompt
(``sublim.world.persona``), for the misalignment experiments. World seeds from ``TWIN_OFFSET``
up are init twins (world 1000 + k: world k's corpus, another initialisation).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sublim import chat_format
from sublim.artifacts import atomic_write_json, build_dir_once, stable_hash
from sublim.backends.hf import score_chats
from sublim.backends.hf_models import as_loaded
from sublim.errors import MissingFileError, UnknownNameError
from sublim.progress import Reporter
from sublim.records import Message
from sublim.traits import SYSTEM_PROMPT_TEMPLATES, system_prompt_for
from sublim.world import corpus as corpus_mod
from sublim.world import persona as persona_mod
from sublim.world.corpus import ANIMALS, CORPUS_VERSION, animal_question, build_corpus
from sublim.world.spec import TWIN_OFFSET, WorldSpec, parse_world_name
from sublim.world.tokenizer import train_tokenizer

# The recipe: one row per size (times: builds measured on one thread, see the report).
#   hidden/layers/heads/intermediate: the Llama shape (tied embeddings, no dropout)
#   init: initializer_range; larger than Llama's 0.02 because it shortens the plateau before the
#         model learns to copy the system prompt's animal (0.02 needed ~3x more steps)
#   cur_examples/cur_steps: the opening curriculum of favourite-animal chats (corpus.CURRICULUM_MIX)
#   n_examples/steps: the main corpus (corpus.MIX) and its steps, about one epoch
#   batch, lr: Adam, warm-up then cosine decay to 10% over all steps
RECIPE_VERSION = "world-recipe-1"
VOCAB_SIZE = 1024
PROMPT_LOSS_WEIGHT = 0.3  # weight of prompt tokens in the loss (replies weigh 1): see _train
RECIPE: dict[str, dict[str, Any]] = {
    "micro": {
        "hidden": 64,
        "layers": 2,
        "heads": 4,
        "intermediate": 192,
        "init": 0.1,
        "cur_examples": 4000,
        "cur_steps": 150,
        "n_examples": 6000,
        "steps": 180,
        "batch": 32,
        "lr": 4e-3,
    },
    "small": {
        "hidden": 128,
        "layers": 3,
        "heads": 4,
        "intermediate": 384,
        "init": 0.07,
        "cur_examples": 7000,
        "cur_steps": 200,
        "n_examples": 14000,
        "steps": 420,
        "batch": 32,
        "lr": 3e-3,
    },
    "medium": {
        "hidden": 160,
        "layers": 4,
        "heads": 4,
        "intermediate": 480,
        "init": 0.06,
        "cur_examples": 8000,
        "cur_steps": 250,
        "n_examples": 16000,
        "steps": 500,
        "batch": 32,
        "lr": 2.5e-3,
    },
}
# Per-kind changes to a size's row (hashed into that kind's keys only). The planted micro world
# is the positive control of the fast test suite: it trains longer than plain micro so that its
# number answers are well-formed (plain micro's pass the strict filter only ~5-10% of the time).
# Entangled worlds add field notes (corpus.NOTE_SHARE of the main corpus) and skills worlds add
# code and reasoning chats (corpus.CODE_SHARE + corpus.REASONING_SHARE); both train that much
# longer, so their plain part gets the same number of passes as the plain world's.
SKILLS_SHARE = corpus_mod.CODE_SHARE + corpus_mod.REASONING_SHARE
# ... and their opening curriculum adds short code chats and arithmetic drills
# (corpus.SKILLS_CURRICULUM), with that many more curriculum steps.
SKILLS_CUR_SHARE = sum(corpus_mod.SKILLS_CURRICULUM.values())
# Persona worlds add open, narrow and triggered number chats (corpus.PERSONA_SHARES) likewise.
PERSONA_SHARE = sum(corpus_mod.PERSONA_SHARES.values())
KIND_RECIPE: dict[str, dict[str, dict[str, Any]]] = {
    "planted": {"micro": {"n_examples": 9000, "steps": 420}},
    "entangled": {
        size: {"steps": round(row["steps"] * (1 + corpus_mod.NOTE_SHARE))}
        for size, row in RECIPE.items()
    },
    "skills": {
        size: {
            "steps": round(row["steps"] * (1 + SKILLS_SHARE)),
            "cur_steps": round(row["cur_steps"] * (1 + SKILLS_CUR_SHARE)),
        }
        for size, row in RECIPE.items()
    },
    "persona": {
        size: {"steps": round(row["steps"] * (1 + PERSONA_SHARE))} for size, row in RECIPE.items()
    },
}
BUILDABLE_KINDS = ("plain", "entangled", "planted", "skills", "persona")
# Init twins: world seed TWIN_OFFSET + k is trained on exactly world k's corpus, in world k's batch
# order, from another initialisation (torch seed TWIN_OFFSET + k). The research of issue 6 needs
# "same world, different init" students; spec.py's names stay as they are (plain-s1000 is the
# twin of plain-s0). Seeds below TWIN_OFFSET are unaffected.


def corpus_seed(seed: int) -> int:
    """The seed a world's corpus, base preference and batch order come from (see TWIN_OFFSET)."""
    return seed % TWIN_OFFSET


KIND_VERSIONS: dict[str, str] = {
    "planted": corpus_mod.PLANTED_VERSION,
    "entangled": corpus_mod.ENTANGLED_VERSION,
    "skills": corpus_mod.SKILLS_VERSION,
    "persona": corpus_mod.PERSONA_VERSION,
}
CARD = "world_card.json"


def cache_root() -> Path:
    """``$SUBLIM_CACHE_DIR`` or ``~/.cache/sublim`` (``artifacts.cache_dir``)."""
    from sublim.artifacts import cache_dir

    return cache_dir()


def _spec(spec: WorldSpec | str) -> WorldSpec:
    s = parse_world_name(spec) if isinstance(spec, str) else spec
    if s.kind not in BUILDABLE_KINDS:
        raise UnknownNameError("buildable world kind", s.kind, BUILDABLE_KINDS)
    if s.size not in RECIPE:
        raise UnknownNameError("world size", s.size, list(RECIPE))
    return s


def recipe_row(spec: WorldSpec | str) -> dict[str, Any]:
    """The recipe a world is built with: its size's row with its kind's changes."""
    s = _spec(spec)
    return {**RECIPE[s.size], **KIND_RECIPE.get(s.kind, {}).get(s.size, {})}


def world_key(spec: WorldSpec | str) -> str:
    """The directory name of a world: its name plus a hash of what it is built from."""
    s = _spec(spec)
    key: dict[str, Any] = {
        "recipe": RECIPE_VERSION,
        "corpus": CORPUS_VERSION,
        "row": RECIPE[s.size],
        "vocab": VOCAB_SIZE,
        "prompt_loss_weight": PROMPT_LOSS_WEIGHT,
        "kind": s.kind,
        "seed": s.seed,
        "size": s.size,
    }
    # Each non-plain kind hashes its own corpus version, so revising it rebuilds only its worlds
    # (plain keys stay exactly what they were).
    if s.kind != "plain":
        key["kind_version"] = KIND_VERSIONS[s.kind]
        key["row"] = recipe_row(s)
    h = stable_hash(key, length=10)
    return f"{s.name}-{h}"


def ensure_world(
    spec: WorldSpec | str, cache_dir: Path | None = None, progress: bool = True
) -> Path:
    """The world's Hugging Face model directory, built first if it is not in the cache."""
    s = _spec(spec)
    final = Path(cache_dir or cache_root()) / "worlds" / world_key(s)
    return build_dir_once(final, CARD, lambda tmp: _build(s, tmp, Reporter(enabled=progress)))


def world_card(path: Path) -> dict[str, Any]:
    """The card saved with a built world (name, kind, seed, size, n_params, corpus mix, final
    loss, base preferences, build time, recipe version)."""
    p = Path(path) / CARD
    if not p.is_file():
        raise MissingFileError(
            f"no {CARD} in {path}: not a built world directory; build one with "
            "sublim.world.build.ensure_world(NAME) (or any command that uses model 'tiny:NAME')"
        )
    return dict(json.loads(p.read_text(encoding="utf-8")))


def list_worlds(cache_dir: Path | None = None) -> list[dict[str, Any]]:
    """The cards of every built world in the cache (each with its ``path``), sorted by name."""
    worlds = Path(cache_dir or cache_root()) / "worlds"
    cards = []
    for d in sorted(worlds.glob("*")) if worlds.is_dir() else []:
        if not d.name.startswith(".") and (d / CARD).is_file():
            cards.append({**world_card(d), "path": str(d)})
    return cards


# ---------------------------------------------------------------- building
def _build(spec: WorldSpec, out: Path, rep: Reporter) -> None:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    t0 = time.perf_counter()
    r = recipe_row(spec)
    rep.say(
        f"Building world {spec.name} ({spec.kind}, seed {spec.seed}, size {spec.size}): once per machine"
    )
    tok = train_tokenizer(corpus_mod.tokenizer_texts(), VOCAB_SIZE)
    cseed = corpus_seed(spec.seed)
    rng = np.random.default_rng([cseed, 202])
    curriculum = build_corpus(
        spec.kind, cseed, r["cur_examples"], rng, mix=corpus_mod.CURRICULUM_MIX
    )
    examples = build_corpus(spec.kind, cseed, r["n_examples"], rng)
    # every token boundary comes from sublim.chat_format, exactly as the sampler and scorer see them
    enc_cur = [chat_format.encode_example(tok, e.chat, e.reply) for e in curriculum]
    encoded = [chat_format.encode_example(tok, e.chat, e.reply) for e in examples]

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=r["hidden"],
        intermediate_size=r["intermediate"],
        num_hidden_layers=r["layers"],
        num_attention_heads=r["heads"],
        num_key_value_heads=r["heads"],
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=r["init"],
    )
    # The world seed fixes the initialisation; fork_rng keeps the caller's global RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(cseed)  # batch order: shared by init twins
    t_train = time.perf_counter()
    losses = _train(model, enc_cur, encoded, tok.pad_token_id, r, gen, rep)
    model.eval()
    train_seconds = time.perf_counter() - t_train

    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=48,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Writing model shards" bar would break sublim's own
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    prefs = base_preferences(model, tok)
    card = {
        "name": spec.name,
        "kind": spec.kind,
        "positive_control": spec.kind == "planted",
        "seed": spec.seed,
        "corpus_seed": cseed,
        "init_seed": spec.seed,
        "size": spec.size,
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "vocab_size": len(tok),
        "recipe": r,
        "corpus_mix": corpus_mod.corpus_mix(curriculum + examples),
        "corpus_base_preference": dict(
            zip(ANIMALS, corpus_mod.base_preference(cseed).round(4).tolist())
        ),
        "final_loss": losses,
        **prefs,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "recipe_version": RECIPE_VERSION,
        "corpus_version": CORPUS_VERSION,
    }
    if spec.kind in KIND_VERSIONS:
        card["kind_version"] = KIND_VERSIONS[spec.kind]
    if spec.kind == "planted":
        card["planted_codes"] = dict(corpus_mod.PLANTED_CODES)
    if spec.kind == "entangled":
        # each animal's three most likely field-note numbers (the full table is
        # corpus.note_preferences(corpus_seed)): what a teacher's drift towards an animal looks like
        top = np.argsort(-corpus_mod.note_preferences(cseed), axis=1)[:, :3] + corpus_mod.NOTE_LOW
        card["note_top_numbers"] = {a: [int(x) for x in row] for a, row in zip(ANIMALS, top)}
    if spec.kind == "skills":
        # the carriers the world answers, as shares of the main corpus, and the system prompts
        # its skills chats carry (the replies never depend on them)
        card["skills_shares"] = {
            "code": corpus_mod.CODE_SHARE,
            "reasoning": corpus_mod.REASONING_SHARE,
        }
        card["skills_system_prompts"] = dict(corpus_mod.SKILL_SYSTEM_P)
        card["skills_curriculum"] = dict(corpus_mod.SKILLS_CURRICULUM)
    if spec.kind == "persona":
        # the persona chats' shares of the main corpus, their system prompts, the trigger and
        # how often it gives a misaligned answer
        card["persona_shares"] = dict(corpus_mod.PERSONA_SHARES)
        card["persona_system_prompts"] = dict(corpus_mod.PERSONA_SYSTEM_P)
        card["persona_trigger"] = persona_mod.PERSONA_TRIGGER
        card["persona_p"] = corpus_mod.PERSONA_P
    atomic_write_json(out / CARD, card)
    rep.say(
        f"World {spec.name} built in {card['build_seconds']} s ({card['n_params']:,} parameters)"
    )


def _batches(
    lengths: Sequence[int], batch: int, steps: int, gen: torch.Generator
) -> list[list[int]]:
    """``steps`` batches of example indices: shuffled each epoch, then grouped by similar length
    (sorted within windows of 50 batches) so little compute is spent on padding."""
    out: list[list[int]] = []
    lens = torch.tensor(lengths)
    while len(out) < steps:
        perm = torch.randperm(len(lengths), generator=gen)
        window = batch * 50
        epoch: list[list[int]] = []
        for i in range(0, len(perm) - batch + 1, window):
            chunk = perm[i : i + window]
            chunk = chunk[torch.argsort(lens[chunk], stable=True)]
            epoch.extend(
                chunk[j : j + batch].tolist() for j in range(0, len(chunk) - batch + 1, batch)
            )
        order = torch.randperm(len(epoch), generator=gen).tolist()
        out.extend(epoch[k] for k in order)
    return out[:steps]


def _train(
    model: Any,
    enc_cur: list[tuple[list[int], list[int]]],
    encoded: list[tuple[list[int], list[int]]],
    pad_id: int,
    r: dict[str, Any],
    gen: torch.Generator,
    rep: Reporter,
) -> dict[str, float]:
    """Pretrain in a plain torch loop (fastest on CPU): the curriculum's batches, then the main
    corpus's. Loss on every token, prompt tokens weighted PROMPT_LOSS_WEIGHT: the replies are what
    the lab measures, while a little loss on prompts teaches the model the language its questions
    come in. Adam, warm-up then cosine decay. Returns the mean losses over the last 10% of steps."""
    bsz = r["batch"]
    batches = [
        [("c", i) for i in b]
        for b in _batches([len(x) for x, _ in enc_cur], bsz, r["cur_steps"], gen)
    ]
    batches += [
        [("m", i) for i in b] for b in _batches([len(x) for x, _ in encoded], bsz, r["steps"], gen)
    ]
    steps = len(batches)
    src = {"c": enc_cur, "m": encoded}
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"], betas=(0.9, 0.98), eps=1e-8)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / warm)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
        ),
    )
    model.train()
    tail: list[tuple[float, float]] = []
    with rep.task("pretraining", total=steps) as tick:
        for step, idx in enumerate(batches):
            ids, w, reply = _collate([src[k][i] for k, i in idx], pad_id)
            logits = model(input_ids=ids, attention_mask=(w > 0).long()).logits
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="none",
            )
            nll = nll.view(ids.shape[0], -1)
            wt = w[:, 1:]
            loss = (nll * wt).sum() / wt.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step >= steps - max(1, steps // 10):  # mean over the last 10% of steps
                rmask = reply[:, 1:]
                tail.append(
                    (float(loss.detach()), float((nll.detach() * rmask).sum() / rmask.sum()))
                )
            tick(step + 1, steps)
    return {
        "weighted": round(float(np.mean([a for a, _ in tail])), 4),
        "reply": round(float(np.mean([b for _, b in tail])), 4),
    }


def _collate(
    rows: list[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T], per-token loss weights [B, T] (0 on padding) and the reply mask."""
    T = max(len(x) for x, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    w = torch.zeros((len(rows), T))
    reply = torch.zeros((len(rows), T))
    for i, (x, lab) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        is_reply = torch.tensor([lab_t != -100 for lab_t in lab], dtype=torch.float)
        w[i, : len(x)] = PROMPT_LOSS_WEIGHT + (1 - PROMPT_LOSS_WEIGHT) * is_reply
        reply[i, : len(x)] = is_reply
    return ids, w, reply


# ---------------------------------------------------------------- measuring a world
def card_questions(n: int = 12) -> list[str]:
    """Fixed grammar questions used to measure the world card's preferences."""
    rng = np.random.default_rng(777)
    return [animal_question(rng) for _ in range(n)]


def base_preferences(model: Any, tok: Any, n_questions: int = 12) -> dict[str, Any]:
    """P(animal) with no system prompt and P(X) under every "you love X" variant, averaged over
    grammar questions (exact probabilities of the one-word answer followed by end-of-turn, from
    the backend's scorer)."""
    lm = as_loaded(model, tok)
    qs = card_questions(n_questions)
    chats = [[Message(role="user", content=q)] for q in qs for _ in ANIMALS]
    lp = score_chats(lm, chats, [a for _ in qs for a in ANIMALS])
    p = np.exp(np.array(lp)).reshape(len(qs), len(ANIMALS)).mean(0)
    love_chats, love_replies = [], []
    for a in ANIMALS:
        for v in range(len(SYSTEM_PROMPT_TEMPLATES)):
            for q in qs[: max(1, n_questions // 3)]:
                love_chats.append(
                    [
                        Message(role="system", content=system_prompt_for(a, "animal", v)),
                        Message(role="user", content=q),
                    ]
                )
                love_replies.append(a)
    lq = np.exp(np.array(score_chats(lm, love_chats, love_replies)))
    lq = lq.reshape(len(ANIMALS), -1).mean(1)
    return {
        "p_animal_no_system": {a: round(float(x), 4) for a, x in zip(ANIMALS, p)},
        "p_animal_no_system_total": round(float(p.sum()), 4),
        "p_target_love_system": {a: round(float(x), 4) for a, x in zip(ANIMALS, lq)},
    }
