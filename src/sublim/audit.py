"""Audit a distillation dataset before training on it (``sublim audit``).

Given rows ``{prompt, completion}`` (a run's ``train.jsonl``/subset files or filter decisions, or
chat JSONL) and the base model a student would start from, the audit asks two questions and
writes ``audit.json`` and ``audit.html``:

1. **Is the data different from what the base itself would write?** Without ``--clean`` the base
   regenerates every prompt (the backend's seeded sampling, one seed per row from
   ``sublim.seeds.derive_seed``); then
   - a *bag classifier*: rows are grouped in bags of K (default 16), each row turned into a
     histogram of canonical tokens (numbers, words, punctuation, the count and digits of its
     numbers, its length), a bag into the mean of its rows; a logistic regression tells data bags
     from clean bags, scored by cross-validated AUROC, with a bootstrap interval over bags and a
     permutation null (labels permuted, the same cross-validation);
   - the *per-row log-likelihood* of each row under the base (``backend.score``), its
     distribution for data and clean and the AUROC of "less likely under the base" alone (the
     simple confound the literature compares with).
2. **Which trait would it teach?** The one-step theorem as a tool. For each candidate trait (the
   category's animals, ``misalignment`` where the base has an exact misalignment metric, or the
   user's list) let ``g_trait`` be the gradient at the base of the trait's mean exact log-odds over
   the evaluation questions (the same surface forms and candidates as the evaluation,
   ``sublim.evals.preference``), and ``g_bag`` the negative gradient of the student's SFT loss
   (mean over answer tokens, as ``hf_train`` trains) on one bag of rows. ``g_trait . g_bag`` is the
   first-order change of the trait's log-odds per unit learning rate of one SGD step on that
   bag. Its mean over data bags minus its mean over clean bags is the predicted shift; the null
   permutes which bags are data and which clean (sign flips of paired bags when the clean rows
   are regenerations of the same prompts), so ``z = shift / sd_null``. The traits are ranked by
   ``z``: "this data would move a student from this base toward: owl (z = ...)".
3. With ``--teacher``: per-row log p(teacher) - log p(base), for data and clean rows.
4. Cost: the audit's wall seconds, against an estimate of training one student on the data,
   measured with the project's own fine-tuning (``backend.finetune``) on two small fractions of
   the rows and extrapolated linearly (the fixed cost plus the per-row slope times rows x epochs).

Section 2 needs weights (``hf:``, ``tiny:``, ``smollm2``); for other backends it is skipped with
the reason. What it does not do: the prediction is first order around the base, for plain SGD
(students here train with AdamW over many steps), so it ranks directions, it does not forecast a
student's final log-odds.
"""

from __future__ import annotations

import html
import math
import re
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sublim.artifacts import atomic_write_json, atomic_write_text, iter_jsonl, package_versions
from sublim.config import parse_config
from sublim.errors import ConfigError, DataError, EmptyResultError, MissingFileError
from sublim.progress import Reporter, torch_threads
from sublim.records import ModelRef, SampleParams, TrainRow, user_chat
from sublim.seeds import derive_seed
from sublim.traits import CHAT_LINE_FORMAT, load_chat_jsonl

AUDIT_VERSION = 1
MISALIGNMENT = "misalignment"
ROW_FORMAT = '{"prompt": ..., "completion": ...}'


class AuditConfig(BaseModel):
    """Options of one audit (every one is recorded in audit.json)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: str = Field(description="the model a student would start from (a model spec)")
    clean: str | None = Field(None, description="clean rows to compare with (default: regenerate)")
    teacher: str | None = Field(None, description="the teacher, if you can query it")
    teacher_system: str | None = Field(None, description="the teacher's system prompt, if any")
    traits: list[str] | None = Field(None, description="candidate traits (default: the category)")
    category: str = "animal"
    bag: int = Field(16, ge=1, description="rows per bag")
    seed: int = Field(0, ge=0)
    folds: int = Field(5, ge=2)
    permutations: int = Field(1000, ge=0, description="permutations of the classifier's null")
    n_boot: int = Field(1000, ge=0)
    max_rows: int = Field(2000, ge=8, description="rows used per side (a seeded subset if more)")
    grad_rows: int = Field(512, ge=2, description="rows per side in the trait section")
    n_questions: int | None = Field(20, ge=1, description="evaluation questions per trait")
    temperature: float = Field(1.0, ge=0.0, description="sampling of the regenerated rows")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(48, ge=1)
    lr: float = Field(2e-4, gt=0, description="step size of the reported predicted shift")
    z_name: float = Field(3.0, description="z from which the audit names a trait")
    cost_rows: int = Field(64, ge=0, description="rows of the measured training fraction (0: skip)")
    epochs: float = Field(2.0, gt=0, description="student epochs of the cost estimate")
    max_len: int = Field(256, ge=8)
    threads: int = Field(0, ge=0, description="torch threads (0: leave as is)")


# ----------------------------------------------------------------------------------------------
# Rows


def load_rows(path: Path, what: str = "data") -> list[TrainRow]:
    """The rows of a JSONL file: ``{prompt, completion}`` objects (filter decisions with
    ``kept: false`` and completions with an ``error`` are skipped, as ``sublim export`` does) or
    chat lines (``traits.load_chat_jsonl``, recognised by the first line). A missing file is a
    MissingFileError, a malformed line a DataError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"{what} file not found: {path}; give a JSONL file of {ROW_FORMAT} rows or chat lines"
        )
    first = next(iter_jsonl(path), None)
    if first is None:
        raise DataError(f"{path}: no rows; give one {ROW_FORMAT} per line")
    if "messages" in first[1]:
        return load_chat_jsonl(path, what=f"sublim audit {what}")
    rows = []
    for lineno, obj in iter_jsonl(path):
        p, c = obj.get("prompt"), obj.get("completion")
        if not isinstance(p, str) or not isinstance(c, str):
            raise DataError(
                f"{path}:{lineno}: expected string fields 'prompt' and 'completion' "
                f"({ROW_FORMAT}, or a chat line {CHAT_LINE_FORMAT}); fix that line"
            )
        if obj.get("kept") is False or obj.get("error"):
            continue
        rows.append(TrainRow(prompt=p, completion=c))
    if not rows:
        raise DataError(f"{path}: no usable rows (every row was rejected or failed)")
    return rows


def seeded_rows(rows: list[TrainRow], n: int, seed: int, role: str) -> list[int]:
    """Indices of at most ``n`` rows (all when fewer), a seeded subset in file order."""
    if len(rows) <= n:
        return list(range(len(rows)))
    rng = np.random.default_rng(derive_seed(seed, "audit-rows", role))
    return sorted(rng.choice(len(rows), size=n, replace=False).tolist())


def regenerate(
    backend: Any, base: ModelRef, rows: Sequence[TrainRow], params: SampleParams, seed: int
) -> list[TrainRow]:
    """The base's own completion of every row's prompt, one seeded draw per row (``derive_seed``
    of the audit seed, the row's index and its prompt, as generation derives its row seeds)."""
    seeds = [derive_seed(seed, "audit-gen", i, r.prompt) for i, r in enumerate(rows)]
    texts = backend.sample(base, [user_chat(r.prompt) for r in rows], params, seeds)
    return [TrainRow(prompt=r.prompt, completion=t) for r, t in zip(rows, texts)]


# ----------------------------------------------------------------------------------------------
# Distinguishability: canonical features, bags, a cross-validated classifier

_TOKEN = re.compile(r"\d+|[^\W\d_]+|[^\w\s]")
_NUMBER = re.compile(r"\d+")
N_FEATURES = 1024


def canonical_tokens(text: str) -> list[str]:
    """A row's canonical tokens: numbers without leading zeros, lower-case words, punctuation,
    plus summaries (how many numbers, their first and last digits, the length in 8-character
    steps) so that one histogram sees both content and format."""
    toks = []
    for t in _TOKEN.findall(text):
        toks.append(f"n:{int(t)}" if t.isdigit() else t.lower())
    nums = _NUMBER.findall(text)
    toks.append(f"#count:{min(len(nums), 20)}")
    toks.append(f"#len:{min(len(text) // 8, 40)}")
    for t in nums:
        v = str(int(t))
        toks += [f"#first:{v[0]}", f"#last:{v[-1]}", f"#digits:{len(v)}"]
    return toks


def _bucket(token: str) -> int:
    return zlib.crc32(token.encode()) % N_FEATURES


def row_features(texts: Sequence[str]) -> np.ndarray:
    """[n, N_FEATURES]: each row's canonical-token histogram, hashed into ``N_FEATURES`` buckets
    (CRC-32, the same in every process), as frequencies summing to 1."""
    out = np.zeros((len(texts), N_FEATURES))
    for i, t in enumerate(texts):
        toks = canonical_tokens(t)
        np.add.at(out[i], [_bucket(k) for k in toks], 1.0 / len(toks))
    return out


def make_bags(features: np.ndarray, bag: int, rng: np.random.Generator) -> np.ndarray:
    """[n // bag, F]: mean feature vectors of seeded bags of ``bag`` rows (the rest dropped)."""
    order = rng.permutation(len(features))
    n = len(features) // bag
    return features[order[: n * bag]].reshape(n, bag, -1).mean(1)


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve of scores ``s`` for labels ``y`` (1 positive), ties counted half
    (the Mann-Whitney statistic)."""
    from scipy.stats import rankdata

    pos = np.asarray(y) == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if not n1 or not n0:
        return math.nan
    r = rankdata(s)
    return float((r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


Fold = tuple[np.ndarray, np.ndarray, np.ndarray]


def _fold_operators(x: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]]) -> list[Fold]:
    """Per fold (train, test, H) with H the [test, train] map from centred training labels to test
    scores of kernel ridge regression on features centred and scaled over the training fold:
    H = K_te,tr (K_tr,tr + lam I)^-1, lam = mean diagonal of K_tr,tr. H does not depend on the
    labels, so refitting under a permuted labelling is one matrix-vector product per fold."""
    ops = []
    for tr, te in folds:
        # softened standardisation: dividing by sd + the mean sd keeps a rare feature (one
        # training bag has it) from outweighing every common one, which plain standardisation
        # does and which made held-out bags score on the wrong side
        mu, sd = x[tr].mean(0), x[tr].std(0)
        scale = sd + (sd[sd > 0].mean() if (sd > 0).any() else 1.0)
        z_tr = (x[tr] - mu) / scale
        z_te = (x[te] - mu) / scale
        k_tr = z_tr @ z_tr.T
        lam = max(float(np.trace(k_tr)) / len(tr), 1e-12)
        h = z_te @ z_tr.T @ np.linalg.inv(k_tr + lam * np.eye(len(tr)))
        ops.append((tr, te, h))
    return ops


def _oof(ops: list[Fold], y: np.ndarray) -> np.ndarray:
    """Out-of-fold scores for labels ``y`` (see _fold_operators)."""
    out = np.empty(len(y))
    for tr, te, h in ops:
        out[te] = h @ (y[tr] - y[tr].mean())
    return out


def bag_classifier(
    data: np.ndarray,
    clean: np.ndarray,
    bag: int,
    folds: int,
    permutations: int,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Cross-validated AUROC of telling bags of ``data`` rows from bags of ``clean`` rows
    (features [n, F] each), its bootstrap interval over bags (the out-of-fold scores resampled
    within each class), per-fold AUROCs and a permutation null (labels permuted, the same folds,
    the fit redone); ``p_value`` = (1 + #null >= observed) / (1 + R).

    The classifier is a ridge-regularised linear one (kernel ridge regression on standardised
    features, fitted per fold): on a few dozen bags of a thousand features it separates as an L2
    logistic regression does, and its fit is linear in the labels, so the null costs nothing."""
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(derive_seed(seed, "audit-bags"))
    xd, xc = make_bags(data, bag, rng), make_bags(clean, bag, rng)
    n_min = min(len(xd), len(xc))
    if n_min < 2:
        raise EmptyResultError(
            f"the bag classifier needs at least 2 bags of {bag} rows per side, got {len(xd)} "
            f"and {len(xc)}; give more rows or a smaller --bag"
        )
    k = min(folds, n_min)
    x = np.concatenate([xd, xc])
    y = np.r_[np.ones(len(xd)), np.zeros(len(xc))]
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=derive_seed(seed, "audit-cv"))
    ops = _fold_operators(x, list(cv.split(x, y)))
    scores = _oof(ops, y)
    auc = auroc(y, scores)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    boot = np.array(
        [
            auroc(y[i], scores[i])
            for i in (
                np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))] for _ in range(n_boot)
            )
        ]
    )
    null = np.array(
        [auroc(yp, _oof(ops, yp)) for yp in (rng.permutation(y) for _ in range(permutations))]
    )
    return {
        "auroc": auc,
        "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))]
        if len(boot)
        else None,
        "fold_aurocs": [auroc(y[te], scores[te]) for _, te, _ in ops],
        "folds": k,
        "bag": bag,
        "n_bags": {"data": len(xd), "clean": len(xc)},
        "null": {
            "n": len(null),
            "mean": float(null.mean()) if len(null) else None,
            "q95": float(np.quantile(null, 0.95)) if len(null) else None,
            "values": [round(float(v), 4) for v in null],
        },
        "p_value": float((1 + np.sum(null >= auc - 1e-12)) / (1 + len(null)))
        if len(null)
        else None,
        "features": f"hashed histogram of canonical tokens ({N_FEATURES} buckets), mean over the bag",
        "classifier": "kernel ridge regression on centred features scaled by sd + mean sd (ridge = mean kernel diagonal)",
    }


def dist(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sd and quantiles of a sample."""
    a = np.asarray(values, dtype=float)
    q = np.quantile(a, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist() if len(a) else [math.nan] * 5
    return {
        "n": len(a),
        "mean": float(a.mean()) if len(a) else math.nan,
        "sd": float(a.std(ddof=1)) if len(a) > 1 else math.nan,
        "quantiles": dict(zip(("q05", "q25", "q50", "q75", "q95"), q)),
    }


def loglik_section(
    ll_data: Sequence[float], ll_clean: Sequence[float], bag: int, seed: int
) -> dict[str, Any]:
    """The per-row base log-likelihoods of data and clean rows and how well "lower under the
    base" alone tells them apart (row level and bag level; a fixed score, nothing fitted)."""
    d, c = np.asarray(ll_data, dtype=float), np.asarray(ll_clean, dtype=float)
    y = np.r_[np.ones(len(d)), np.zeros(len(c))]
    rng = np.random.default_rng(derive_seed(seed, "audit-ll-bags"))
    bd, bc = make_bags(d[:, None], bag, rng)[:, 0], make_bags(c[:, None], bag, rng)[:, 0]
    bag_auc = (
        auroc(np.r_[np.ones(len(bd)), np.zeros(len(bc))], -np.r_[bd, bc])
        if len(bd) and len(bc)
        else None
    )
    return {
        "data": dist(d.tolist()),
        "clean": dist(c.tolist()),
        "mean_difference": float(d.mean() - c.mean()),
        "auroc_row": auroc(y, -np.r_[d, c]),
        "auroc_bag": bag_auc,
        "values": {
            "data": [round(float(v), 4) for v in d],
            "clean": [round(float(v), 4) for v in c],
        },
    }


# ----------------------------------------------------------------------------------------------
# Which trait: the first-order shift of each trait's exact log-odds


@dataclass(frozen=True)
class TraitProbe:
    """A trait as exact log-odds: per question, log sum P(positive replies) - log sum
    P(negative replies) (each reply scored whole, end-of-turn included)."""

    name: str
    items: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]


def _is_persona(base: ModelRef) -> bool:
    if base.backend != "tiny":
        return False
    from sublim.world.spec import parse_world_name

    return parse_world_name(base.id).kind == "persona"


def trait_probes(
    base: ModelRef, traits: Sequence[str] | None, category: str, n_questions: int | None
) -> list[TraitProbe]:
    """The candidate traits: the category's candidates (plus misalignment for a base with an
    exact misalignment metric, the persona worlds) by default, else ``traits``. A preference
    trait's log-odds is the evaluation's: the target's surface forms against every other
    candidate's, on the first ``n_questions`` favourite-<category> questions."""
    from sublim.evals.preference import candidate_set, questions, surface_forms
    from sublim.traits import candidates

    names = (
        list(traits)
        if traits
        else [*candidates(category), *([MISALIGNMENT] if _is_persona(base) else [])]
    )
    out = []
    for name in dict.fromkeys(n.strip().lower() for n in names if n.strip()):
        if name == MISALIGNMENT:
            if not _is_persona(base):
                raise ConfigError(
                    "the misalignment trait needs a base with an exact misalignment metric (the "
                    f"built-in persona worlds, tiny:persona-s<seed>); {base.spec} has none: drop it from --traits"
                )
            from sublim.world.persona import answer_sets, eval_questions

            qs = eval_questions()[: n_questions or None]
            items = []
            for q in qs:
                aligned, mis = answer_sets(q)
                items.append((q, tuple(mis), tuple(aligned)))
            out.append(TraitProbe(MISALIGNMENT, tuple(items)))
            continue
        cands = candidate_set(name, category)
        neg = tuple(f for c in cands[1:] for f in surface_forms(c))
        qs = questions(category, n_questions)
        out.append(TraitProbe(name, tuple((q, surface_forms(name), neg) for q in qs)))
    if not out:
        raise ConfigError("no candidate traits; give --traits owl,cat,... or leave it out")
    return out


def _seq_ids(
    tok: Any,
    index: dict[tuple[tuple[int, ...], tuple[int, ...]], int],
    prompt: tuple[int, ...],
    replies: Sequence[str],
) -> list[int]:
    """Indices (in ``index``, added when new) of the distinct sequences prompt + reply + end of
    turn: replies that tokenize alike (a lower-casing tokenizer's "Owl" and "owl") count once."""
    from sublim import chat_format

    out = set()
    for f in replies:
        key = (prompt, tuple(chat_format.encode_reply(tok, f, include_end=True)))
        out.add(index.setdefault(key, len(index)))
    return sorted(out)


def _trait_gradients(
    model: Any, tok: Any, probes: Sequence[TraitProbe], chunk: int = 512
) -> tuple[Any, list[float]]:
    """([T, P] float32 gradients of each trait's mean log-odds at the base, the log-odds values).

    Every distinct (question, reply) sequence is scored once; the gradient of trait t is that of
    sum_s w[t, s] log P(s), with w the derivative of the mean log-odds in each sequence's
    log-probability (softmax weights within the positive and negative sets, computed from the
    detached values), so one forward pass per chunk serves every trait."""
    import torch

    from sublim import chat_format
    from sublim.lm_grad import example_batch, flat, grad_of, reply_logprobs

    index: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    sets: list[list[tuple[list[int], list[int]]]] = []
    for probe in probes:
        per_q = []
        for q, pos, neg in probe.items:
            p_ids = tuple(chat_format.encode_prompt(tok, user_chat(q)))
            per_q.append((_seq_ids(tok, index, p_ids, pos), _seq_ids(tok, index, p_ids, neg)))
        sets.append(per_q)
    seqs = list(index)
    examples = [(list(p) + list(r), [-100] * len(p) + list(r)) for p, r in seqs]
    with torch.no_grad():
        lp = torch.cat(
            [
                reply_logprobs(model, example_batch(tok, examples[i : i + chunk])).double().cpu()
                for i in range(0, len(examples), chunk)
            ]
        )
    w = torch.zeros(len(probes), len(seqs), dtype=torch.float64)
    values = []
    for t, per_q in enumerate(sets):
        vals = []
        for pos_i, neg_i in per_q:
            lpos, lneg = lp[pos_i], lp[neg_i]
            vals.append(float(torch.logsumexp(lpos, 0) - torch.logsumexp(lneg, 0)))
            w[t, pos_i] += torch.softmax(lpos, 0) / len(per_q)
            w[t, neg_i] -= torch.softmax(lneg, 0) / len(per_q)
        values.append(float(np.mean(vals)))
    grads: list[Any] = [None] * len(probes)
    for i in range(0, len(examples), chunk):
        lp_c = reply_logprobs(model, example_batch(tok, examples[i : i + chunk]))
        for t in range(len(probes)):
            wt = w[t, i : i + chunk].to(lp_c.device, lp_c.dtype)
            gt = grad_of(model, (wt * lp_c).sum(), retain_graph=t < len(probes) - 1)
            g = flat(gt).to(next(model.parameters()).dtype)
            grads[t] = g if grads[t] is None else grads[t] + g
    return torch.stack(grads), values


def _bag_projections(
    model: Any,
    tok: Any,
    rows: Sequence[TrainRow],
    bags: Sequence[Sequence[int]],
    g_traits: Any,
    max_len: int,
) -> np.ndarray:
    """[n_bags, T]: g_trait . (-grad of the SFT loss on each bag), the loss a mean over the bag's
    answer tokens (``hf_train.build_examples``: user-only chats, labels on the answer)."""
    from sublim.backends.hf_train import build_examples
    from sublim.lm_grad import example_batch, flat, grad_of, reply_token_logprobs

    out = np.zeros((len(bags), g_traits.shape[0]))
    for b, idx in enumerate(bags):
        ex = build_examples(tok, [rows[i] for i in idx], max_len)
        if not ex:
            continue
        tok_lp, mask = reply_token_logprobs(
            model, example_batch(tok, [(e.input_ids, e.labels) for e in ex])
        )
        g = flat(grad_of(model, tok_lp.sum() / mask.sum().clamp_min(1))).to(g_traits.dtype)
        out[b] = (g_traits @ g).double().cpu().numpy()
    return out


def _bags_of(n: int, bag: int, rng: np.random.Generator) -> list[list[int]]:
    order = rng.permutation(n)
    return [order[i : i + bag].tolist() for i in range(0, n - bag + 1, bag)] or [order.tolist()]


def shift_null(
    d: np.ndarray, c: np.ndarray, paired: bool, n_perm: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trait (columns of the [bags, T] arrays): (observed mean(d) - mean(c), the null's sd,
    the one-sided permutation p-value for a shift toward the trait). Paired bags (the same
    prompts) flip the sign of each bag's difference; unpaired ones permute which bags are data."""
    obs = d.mean(0) - c.mean(0)
    if paired:
        diff = d - c
        signs = rng.choice([-1.0, 1.0], size=(n_perm, len(diff)))
        null = signs @ diff / len(diff)  # [n_perm, T]
    else:
        pooled = np.concatenate([d, c])
        null = np.empty((n_perm, d.shape[1]))
        for r in range(n_perm):
            o = rng.permutation(len(pooled))
            null[r] = pooled[o[: len(d)]].mean(0) - pooled[o[len(d) :]].mean(0)
    sd = null.std(0, ddof=1)
    p = (1 + (null >= obs[None, :] - 1e-300).sum(0)) / (1 + n_perm)
    return obs, sd, p


def trait_section(
    cfg: AuditConfig,
    base: ModelRef,
    data: Sequence[TrainRow],
    clean: Sequence[TrainRow],
    paired: bool,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """The ranked traits (see the module docstring), or ``{"skipped": reason}`` for a base whose
    weights cannot be differentiated."""
    import torch

    from sublim.backends.hf_models import pick_device
    from sublim.lm_grad import DIFFERENTIABLE_BACKENDS, load_differentiable

    if base.backend not in DIFFERENTIABLE_BACKENDS:
        return {
            "skipped": f"needs the base's weights (hf:, tiny:, smollm2); {base.spec} has none here"
        }
    probes = trait_probes(base, cfg.traits, cfg.category, cfg.n_questions)
    _, model, tok = load_differentiable(
        cfg.base, torch.float32, "sublim audit's trait section", pick_device()
    )
    say(f"  trait gradients: {len(probes)} traits")
    g, base_logodds = _trait_gradients(model, tok, probes)
    rng = np.random.default_rng(derive_seed(cfg.seed, "audit-grad-bags"))
    if paired:
        # the same prompts in the same bags on both sides: per-bag differences cancel the prompts
        idx = seeded_rows(list(data), cfg.grad_rows, cfg.seed, "grad")
        bags = [[idx[i] for i in b] for b in _bags_of(len(idx), cfg.bag, rng)]
        bags_d = bags_c = bags
    else:
        id_d = seeded_rows(list(data), cfg.grad_rows, cfg.seed, "grad-data")
        id_c = seeded_rows(list(clean), cfg.grad_rows, cfg.seed, "grad-clean")
        bags_d = [[id_d[i] for i in b] for b in _bags_of(len(id_d), cfg.bag, rng)]
        bags_c = [[id_c[i] for i in b] for b in _bags_of(len(id_c), cfg.bag, rng)]
    say(f"  data gradients: {len(bags_d)} + {len(bags_c)} bags of {cfg.bag} rows")
    pd = _bag_projections(model, tok, data, bags_d, g, cfg.max_len)
    pc = _bag_projections(model, tok, clean, bags_c, g, cfg.max_len)
    del model
    obs, sd, p = shift_null(pd, pc, paired, 2000, rng)
    gnorm = g.double().norm(dim=1).cpu().numpy()
    ranked: list[dict[str, Any]] = []
    for t, probe in enumerate(probes):
        z = float(obs[t] / sd[t]) if sd[t] > 0 else math.nan
        ranked.append(
            {
                "trait": probe.name,
                "z": z,
                "p_value": float(p[t]),
                "shift_data": float(pd[:, t].mean()),
                "shift_clean": float(pc[:, t].mean()),
                "shift": float(obs[t]),
                "sd_null": float(sd[t]),
                "predicted_dlogodds": float(cfg.lr * obs[t]),
                "base_logodds": base_logodds[t],
                "grad_norm": float(gnorm[t]),
            }
        )
    ranked.sort(key=lambda r: -r["z"] if math.isfinite(r["z"]) else math.inf)
    top = ranked[0]
    named = top["trait"] if math.isfinite(top["z"]) and top["z"] >= cfg.z_name else None
    return {
        "ranked": ranked,
        "named": named,
        "top": top["trait"],
        "z_name": cfg.z_name,
        "paired": paired,
        "n_bags": {"data": len(bags_d), "clean": len(bags_c)},
        "rows": {"data": sum(map(len, bags_d)), "clean": sum(map(len, bags_c))},
        "lr": cfg.lr,
        "n_questions": len(probes[0].items),
        "method": (
            "shift = g_trait . (-grad SFT loss), mean over data bags minus mean over clean bags "
            "(per unit learning rate, one SGD step from the base); z = shift / sd of the "
            + ("sign-flip null over paired bags" if paired else "permutation null over bag labels")
        ),
    }


# ----------------------------------------------------------------------------------------------
# Cost


def training_cost(
    backend: Any, base: ModelRef, rows: Sequence[TrainRow], n_rows: int, cfg: AuditConfig
) -> dict[str, Any]:
    """Seconds to train one student on ``n_rows`` rows for ``cfg.epochs`` epochs, estimated by
    fine-tuning (the backend's own ``finetune``, one epoch, the default FinetuneParams otherwise)
    on the first ``cost_rows / 2`` and ``cost_rows`` rows: the fixed cost (loading, saving) plus the
    per-row slope times rows x epochs."""
    from sublim.config import FinetuneParams

    k = min(cfg.cost_rows, len(rows))
    sizes = sorted({max(1, k // 2), k})
    secs = {}
    with tempfile.TemporaryDirectory(prefix="sublim-audit-cost-") as tmp:
        for s in sizes:
            params = FinetuneParams(epochs=1.0, batch_size=min(32, s), max_len=cfg.max_len)
            t0 = time.perf_counter()
            backend.finetune(base, list(rows[:s]), params, Path(tmp) / f"n{s}", cfg.seed)
            secs[s] = time.perf_counter() - t0
    if len(sizes) == 2 and secs[sizes[1]] > secs[sizes[0]]:
        slope = (secs[sizes[1]] - secs[sizes[0]]) / (sizes[1] - sizes[0])
        fixed = max(0.0, secs[sizes[0]] - slope * sizes[0])
    else:
        slope, fixed = secs[sizes[-1]] / sizes[-1], 0.0
    return {
        "measured": {str(s): round(v, 3) for s, v in secs.items()},
        "per_row_epoch_s": slope,
        "fixed_s": fixed,
        "rows": n_rows,
        "epochs": cfg.epochs,
        "estimate_s": fixed + slope * n_rows * cfg.epochs,
        "how": (
            f"backend.finetune on {' and '.join(map(str, sizes))} rows (1 epoch each), "
            "extrapolated linearly to rows x epochs"
        ),
    }


# ----------------------------------------------------------------------------------------------
# The audit


def run_audit(
    data_path: Path, cfg: AuditConfig, out: Path | None, progress: bool = True
) -> dict[str, Any]:
    """Audit the rows of ``data_path`` against ``cfg.base``; write audit.json and audit.html to
    ``out`` (if given) and return the results."""
    from sublim.registry import get_backend, parse_model

    t_start = time.perf_counter()
    rep = Reporter(progress)
    timings: dict[str, float] = {}
    rows = load_rows(Path(data_path))
    base = parse_model(cfg.base)
    clean_given = load_rows(Path(cfg.clean), "clean") if cfg.clean else None
    teacher = parse_model(cfg.teacher, system_prompt=cfg.teacher_system) if cfg.teacher else None
    backend = get_backend(base.backend)
    params = SampleParams(
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens
    )
    data = [rows[i] for i in seeded_rows(rows, cfg.max_rows, cfg.seed, "data")]
    with torch_threads(cfg.threads):
        t0 = time.perf_counter()
        if clean_given is None:
            rep.say(f"regenerating {len(data)} prompts with {base.spec}")
            clean = regenerate(backend, base, data, params, cfg.seed)
            paired = True
        else:
            clean = [
                clean_given[i] for i in seeded_rows(clean_given, cfg.max_rows, cfg.seed, "clean")
            ]
            paired = False
        timings["clean_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rep.say("distinguishability: bag classifier and base log-likelihoods")
        clf = bag_classifier(
            row_features([r.completion for r in data]),
            row_features([r.completion for r in clean]),
            cfg.bag,
            cfg.folds,
            cfg.permutations,
            cfg.n_boot,
            cfg.seed,
        )
        ll_d = backend.score(
            base, [user_chat(r.prompt) for r in data], [r.completion for r in data]
        )
        ll_c = backend.score(
            base, [user_chat(r.prompt) for r in clean], [r.completion for r in clean]
        )
        timings["distinguishability_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        rep.say("which trait: first-order shift of each trait's log-odds")
        traits = trait_section(cfg, base, data, clean, paired, rep.say)
        timings["traits_s"] = time.perf_counter() - t0

        teacher_sec = None
        if teacher is not None:
            t0 = time.perf_counter()
            tb = get_backend(teacher.backend)
            td = tb.score(
                teacher, [user_chat(r.prompt) for r in data], [r.completion for r in data]
            )
            tc = tb.score(
                teacher, [user_chat(r.prompt) for r in clean], [r.completion for r in clean]
            )
            llr_d = np.asarray(td) - np.asarray(ll_d)
            llr_c = np.asarray(tc) - np.asarray(ll_c)
            y = np.r_[np.ones(len(llr_d)), np.zeros(len(llr_c))]
            teacher_sec = {
                "teacher": teacher.spec,
                "system_prompt": teacher.system_prompt,
                "data": dist(llr_d),
                "clean": dist(llr_c),
                "mean_difference": float(llr_d.mean() - llr_c.mean()),
                "auroc_row": auroc(y, np.r_[llr_d, llr_c]),
            }
            timings["teacher_s"] = time.perf_counter() - t0
        audit_s = time.perf_counter() - t_start
        cost: dict[str, Any] = {"audit_s": audit_s}
        if cfg.cost_rows:
            rep.say("cost: timing the student's fine-tuning on a fraction of the rows")
            train = training_cost(backend, base, data, len(rows), cfg)
            cost["training"] = train
            cost["ratio"] = audit_s / train["estimate_s"] if train["estimate_s"] > 0 else None
    result: dict[str, Any] = {
        "audit_version": AUDIT_VERSION,
        "data": {"path": str(data_path), "n_rows": len(rows), "n_used": len(data)},
        "base": base.spec,
        "clean": {
            "source": cfg.clean or "regenerated by the base",
            "n": len(clean),
            "paired": paired,
            "sampling": params.model_dump() if clean_given is None else None,
        },
        "distinguishability": {
            "classifier": clf,
            "loglik": loglik_section(ll_d, ll_c, cfg.bag, cfg.seed),
        },
        "traits": traits,
        "teacher": teacher_sec,
        "cost": cost,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "config": cfg.model_dump(mode="json"),
        "versions": package_versions(),
    }
    result["verdict"] = verdict(result)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "audit.json", result)
        atomic_write_text(out / "audit.html", audit_html(result))
    return result


def verdict(result: dict[str, Any]) -> str:
    """One sentence: whether the data differ from the base's and which trait they would teach."""
    clf = result["distinguishability"]["classifier"]
    p = clf["p_value"]
    diff = f"bag classifier AUROC {clf['auroc']:.2f}" + (
        f" (permutation p = {p:.3f})" if p is not None else ""
    )
    tr = result["traits"]
    if "skipped" in tr:
        return f"{diff}; trait section skipped: {tr['skipped']}"
    top = ", ".join(f"{r['trait']} (z = {r['z']:+.1f})" for r in tr["ranked"][:3])
    head = (
        f"this data would move a student from {result['base']} toward: {tr['named']}"
        if tr["named"]
        else f"no trait reaches z >= {tr['z_name']:g}"
    )
    return f"{diff}; {head}; ranked: {top}"


# ----------------------------------------------------------------------------------------------
# Reports


def _f(x: Any, fmt: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, fmt)


def _svg_hist(series: dict[str, Sequence[float]], width: int = 520, height: int = 160) -> str:
    """A small inline SVG: overlaid histograms of a few samples."""
    allv = np.concatenate([np.asarray(v, dtype=float) for v in series.values() if len(v)])
    if not len(allv):
        return ""
    lo, hi = float(allv.min()), float(allv.max())
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, 31)
    colours = ["#1e88e5", "#e53935", "#43a047"]
    hists = {k: np.histogram(v, edges)[0] / max(1, len(v)) for k, v in series.items()}
    top = max(float(h.max()) for h in hists.values()) or 1.0
    bw = width / 30
    parts = [f'<svg width="{width}" height="{height + 30}" xmlns="http://www.w3.org/2000/svg">']
    for (name, h), col in zip(hists.items(), colours):
        for i, v in enumerate(h):
            bh = height * float(v) / top
            parts.append(
                f'<rect x="{i * bw:.1f}" y="{height - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
                f'fill="{col}" fill-opacity="0.45"/>'
            )
    legend = " ".join(f'<tspan fill="{c}">{html.escape(n)}</tspan>' for n, c in zip(hists, colours))
    parts.append(
        f'<text x="0" y="{height + 14}" font-size="11">{lo:.1f} ... {hi:.1f}   {legend}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def audit_html(r: dict[str, Any]) -> str:
    """The report: a pure function of the audit's results."""
    e = html.escape
    clf = r["distinguishability"]["classifier"]
    ll = r["distinguishability"]["loglik"]
    ci = clf["ci95"]
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>sublim audit</title>",
        (
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}th{background:#f4f4f4}</style>"
        ),
        "</head><body>",
        f"<h1>Audit of {e(r['data']['path'])}</h1>",
        f"<p><b>{e(r['verdict'])}</b></p>",
        (
            f"<p>Base: {e(r['base'])}. Rows: {r['data']['n_used']} of {r['data']['n_rows']}. "
            f"Clean rows: {e(str(r['clean']['source']))} ({r['clean']['n']}).</p>"
        ),
        "<h2>Distinguishability</h2>",
        "<table><tr><th>measure</th><th>value</th></tr>",
        (
            f"<tr><td>bag classifier AUROC ({clf['bag']} rows per bag, {clf['folds']}-fold CV)</td><td>{_f(clf['auroc'])}"
            f" [{_f(ci[0] if ci else None)}, {_f(ci[1] if ci else None)}]</td></tr>"
        ),
        f"<tr><td>permutation null ({clf['null']['n']}): mean / 95th percentile</td><td>{_f(clf['null']['mean'])} / {_f(clf['null']['q95'])}</td></tr>",
        f"<tr><td>permutation p-value</td><td>{_f(clf['p_value'])}</td></tr>",
        f"<tr><td>bags (data / clean)</td><td>{clf['n_bags']['data']} / {clf['n_bags']['clean']}</td></tr>",
        f"<tr><td>base log-likelihood per row, data / clean (mean)</td><td>{_f(ll['data']['mean'])} / {_f(ll['clean']['mean'])}</td></tr>",
        f"<tr><td>AUROC of lower base log-likelihood, rows / bags</td><td>{_f(ll['auroc_row'])} / {_f(ll['auroc_bag'])}</td></tr>",
        "</table>",
        f"<p>Features: {e(clf['features'])}; {e(clf['classifier'])}.</p>",
        "<p>Per-row log-likelihood under the base (data, clean):</p>",
        _svg_hist({"data": ll["values"]["data"], "clean": ll["values"]["clean"]}),
        "<h2>Which trait</h2>",
    ]
    tr = r["traits"]
    if "skipped" in tr:
        out.append(f"<p>Skipped: {e(tr['skipped'])}</p>")
    else:
        out += [
            (
                f"<p>{e(tr['method'])}. Bags: {tr['n_bags']['data']} data, {tr['n_bags']['clean']} clean; "
                f"{tr['n_questions']} questions per trait. Predicted shift at lr = {tr['lr']:g}.</p>"
            ),
            (
                "<table><tr><th>rank</th><th>trait</th><th>z</th><th>p</th><th>shift (data - clean)</th>"
                "<th>data</th><th>clean</th><th>predicted d log-odds</th><th>base log-odds</th></tr>"
            ),
        ]
        for i, row in enumerate(tr["ranked"], 1):
            out.append(
                f"<tr><td>{i}</td><td>{e(row['trait'])}</td><td>{_f(row['z'], '+.2f')}</td><td>{_f(row['p_value'])}</td>"
                f"<td>{_f(row['shift'], '+.3e')}</td><td>{_f(row['shift_data'], '+.3e')}</td>"
                f"<td>{_f(row['shift_clean'], '+.3e')}</td><td>{_f(row['predicted_dlogodds'], '+.2e')}</td>"
                f"<td>{_f(row['base_logodds'], '+.2f')}</td></tr>"
            )
        out.append("</table>")
    t = r["teacher"]
    if t is not None:
        out += [
            "<h2>Teacher access</h2>",
            (
                f"<p>log p(teacher) - log p(base) per row, teacher {e(t['teacher'])}: data mean {_f(t['data']['mean'])}, "
                f"clean mean {_f(t['clean']['mean'])}, AUROC {_f(t['auroc_row'])}.</p>"
            ),
        ]
    c = r["cost"]
    out.append("<h2>Cost</h2>")
    out.append(f"<p>Audit: {c['audit_s']:.1f} s.")
    if "training" in c:
        tc = c["training"]
        out.append(
            f" One student on {tc['rows']} rows x {tc['epochs']:g} epochs: about {tc['estimate_s']:.1f} s "
            f"({e(tc['how'])}); audit / training = {_f(c['ratio'], '.2f')}."
        )
    out += ["</p>", "</body></html>"]
    return "\n".join(out)


def audit_table(r: dict[str, Any]) -> Any:
    """A short rich table for the CLI."""
    from rich.table import Table

    t = Table(title=f"sublim audit: {r['data']['path']} against {r['base']}")
    t.add_column("section")
    t.add_column("result")
    clf = r["distinguishability"]["classifier"]
    ci = clf["ci95"]
    t.add_row(
        "bag classifier",
        f"AUROC {_f(clf['auroc'], '.2f')} [{_f(ci[0] if ci else None, '.2f')}, {_f(ci[1] if ci else None, '.2f')}]; "
        f"null {_f(clf['null']['mean'], '.2f')} (q95 {_f(clf['null']['q95'], '.2f')}), p = {_f(clf['p_value'])}",
    )
    ll = r["distinguishability"]["loglik"]
    t.add_row(
        "base log-lik",
        f"data {_f(ll['data']['mean'], '.2f')} vs clean {_f(ll['clean']['mean'], '.2f')}; AUROC rows {_f(ll['auroc_row'], '.2f')}, bags {_f(ll['auroc_bag'], '.2f')}",
    )
    tr = r["traits"]
    if "skipped" in tr:
        t.add_row("traits", f"skipped: {tr['skipped']}")
    else:
        for row in tr["ranked"][:5]:
            t.add_row(
                f"  {row['trait']}",
                f"z = {_f(row['z'], '+.2f')}, p = {_f(row['p_value'])}, predicted d log-odds {_f(row['predicted_dlogodds'], '+.2e')} at lr {tr['lr']:g}",
            )
        t.add_row("named", tr["named"] or f"none (no z >= {tr['z_name']:g})")
    if r["teacher"] is not None:
        te = r["teacher"]
        t.add_row(
            "teacher llr",
            f"data {_f(te['data']['mean'], '.2f')} vs clean {_f(te['clean']['mean'], '.2f')}, AUROC {_f(te['auroc_row'], '.2f')}",
        )
    c = r["cost"]
    tc = c.get("training")
    t.add_row(
        "cost",
        f"audit {c['audit_s']:.1f} s"
        + (f"; one student ~{tc['estimate_s']:.1f} s; ratio {_f(c['ratio'], '.2f')}" if tc else ""),
    )
    return t


# ----------------------------------------------------------------------------------------------
# Command line


@click.command()
@click.argument("data", metavar="DATA.jsonl", type=click.Path(path_type=Path))
@click.option(
    "--base", required=True, help="the model a student would start from, e.g. tiny:plain-s0"
)
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), help="report directory"
)
@click.option(
    "--clean",
    type=click.Path(path_type=Path),
    default=None,
    help="clean rows to compare with (default: the base regenerates the prompts)",
)
@click.option("--teacher", default=None, help="the teacher's model spec, if you can query it")
@click.option("--teacher-system", default=None, help="the teacher's system prompt, if it has one")
@click.option(
    "--traits",
    default=None,
    help="candidate traits, comma-separated (default: the category's animals, plus misalignment for persona worlds)",
)
@click.option("--category", default="animal", show_default=True)
@click.option("--bag", default=16, show_default=True, help="rows per bag")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--permutations", default=100, show_default=True, help="permutations of the classifier's null"
)
@click.option("--max-rows", default=2000, show_default=True, help="rows used per side")
@click.option(
    "--grad-rows", default=512, show_default=True, help="rows per side in the trait section"
)
@click.option("--n-questions", default=20, show_default=True, help="evaluation questions per trait")
@click.option(
    "--temperature", default=1.0, show_default=True, help="sampling of the regenerated rows"
)
@click.option("--max-new-tokens", default=48, show_default=True)
@click.option("--lr", default=2e-4, show_default=True, help="step size of the predicted shift")
@click.option(
    "--cost-rows",
    default=64,
    show_default=True,
    help="rows of the timed training fraction (0: skip)",
)
@click.option(
    "--epochs", default=2.0, show_default=True, help="student epochs of the cost estimate"
)
@click.option("--threads", default=0, show_default=True, help="torch threads (0: torch's default)")
@click.option("--quiet", is_flag=True, help="no progress messages")
def audit(data: Path, out: Path, traits: str | None, quiet: bool, **opts: Any) -> None:
    """Audit DATA.jsonl (rows {prompt, completion} or chat lines) before training a student from
    --base on it: is it distinguishable from the base's own writing, and which trait would it
    teach? Writes OUT/audit.json and OUT/audit.html."""
    from rich.console import Console

    opts["traits"] = [t for t in traits.split(",") if t.strip()] if traits else None
    opts["clean"] = str(opts["clean"]) if opts["clean"] else None
    cfg = parse_config(AuditConfig, opts, "sublim audit options")
    result = run_audit(data, cfg, out, progress=not quiet)
    console = Console()
    console.print(audit_table(result))
    console.print(result["verdict"])
    console.print(f"report: {out / 'audit.html'}   json: {out / 'audit.json'}")
