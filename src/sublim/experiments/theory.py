"""The one-step theorem of subliminal learning, measured (``sublim theory``).

The paper's theorem: let a teacher be ``theta_T = theta0 + eps * Delta_T`` after one small gradient
step on *any* loss L_T. A student that starts from the same ``theta0`` and takes one gradient step
to imitate the teacher's outputs on *any* inputs moves by ``Delta_S`` with
``<Delta_S, Delta_T> >= 0`` to first order in eps. Why: at theta0 the imitation loss and its
gradient vanish, and expanding the teacher's outputs to first order gives
``Delta_S ~ eta * eps * J^T H J Delta_T`` (J the Jacobian of the outputs, H the positive
semi-definite Hessian of the loss in output space), so
``<Delta_S, Delta_T> = eta * eps * |H^1/2 J Delta_T|^2 >= 0``. The student's step therefore also
lowers L_T at first order, whatever inputs it imitated on. A student from a *different*
initialisation gets no such guarantee: its imitation gradient is dominated by the mismatch
between two unrelated networks.

This module measures, across seeds and teacher step sizes:

- ``cosine`` and ``inner`` product between the student's update and the teacher's update;
- ``dloss_first_order`` = <grad L_T(student init), Delta_S> (the first-order change of the
  teacher's loss at the student) and ``dloss_actual`` = L_T(init + Delta_S) - L_T(init);
- ``cosine_specific`` and ``dloss_specific_first_order``: the same for the part of the student's
  step that the teacher's step causes, Delta_S(eps) - Delta_S(eps=0). For a same-init student
  Delta_S(0) = 0, so they equal the plain measures; a different-init student already moves when
  imitating an untouched theta0 (two unrelated networks disagree), and this control removes that
  generic pull, which is what "always contrast with a control" means here;

for a same-init and a different-init student. Two model families:

- ``digits`` (default): the batched MLPs of :mod:`sublim.experiments.digits` (one model per seed in
  one tensor program, float64). Teacher loss: cross-entropy on a batch of labelled digits through
  the class logits; the student imitates on noise images (all logits or the auxiliary ones).
- any causal LM transformers can load (``hf:/dir`` or ``tiny:<world>``): the teacher takes a step
  on a trait, ``L_T = -log P(target answer | favourite-<category> question)``; the student
  imitates the teacher's next-token distributions at every position of number prompts. The
  different-init student is another built-in world (``tiny:``), a ``--cross-model``, or, for
  ``hf:``, a fresh random initialisation of the same architecture.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from sublim.artifacts import atomic_write_json, atomic_write_text, package_versions
from sublim.config import parse_config
from sublim.errors import ConfigError
from sublim.lm_grad import (
    dot,
    grad_of,
    load_differentiable,
    norm,
    pad,
    params_of,
    reply_logprobs,
)
from sublim.progress import Reporter, torch_threads
from sublim.seeds import derive_seed

MEASURES = (
    "cosine",
    "inner",
    "dloss_first_order",
    "dloss_actual",
    "cosine_specific",
    "dloss_specific_first_order",
)


class TheoryConfig(BaseModel):
    """Options of the one-step measurement (digits options are ignored for language models and
    vice versa)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field("digits", description="digits | hf:/path/to/dir | tiny:<world name>")
    cross_model: str | None = Field(
        None,
        description="different-init student (default: tiny world seed+1, or a fresh init of the same architecture)",
    )
    seeds: int = Field(10, ge=1)
    first_seed: int = Field(0, ge=0)
    step_sizes: list[float] = Field(
        default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0],
        min_length=1,
        description="teacher SGD step sizes eps",
    )
    small_step: float = Field(
        0.1, gt=0, description="step sizes up to this count as 'small' in the headline"
    )
    teacher_steps: int = Field(1, ge=1, description="SGD steps of size eps that make the teacher")
    student_lr: float = Field(
        1e-2, gt=0, description="the student's one SGD step size (scales Delta_S only)"
    )
    dtype: Literal["auto", "float32", "float64"] = Field(
        "auto", description="auto: float64 for digits, float32 for LMs"
    )
    # digits MLPs
    data: Literal["digits", "mnist"] = "digits"
    data_dir: str | None = None
    width: int = Field(128, ge=1)
    depth: int = Field(2, ge=1)
    n_aux: int = Field(3, ge=1)
    teacher_batch: int = Field(256, ge=1, description="labelled images in the teacher's loss")
    student_batch: int = Field(256, ge=1, description="noise images the student imitates on")
    noise: Literal["uniform", "normal", "uniform01"] = "uniform"
    imitate: Literal["all", "aux"] = Field("all", description="logits the student imitates")
    # language models
    target: str = Field("owl", description="the trait: favourite <category> = target")
    category: str = "animal"
    n_trait_prompts: int = Field(8, ge=1)
    n_number_prompts: int = Field(32, ge=1)
    threads: int = Field(0, ge=0, description="torch threads while running (0: leave as is)")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


def parse_theory_config(data: dict[str, Any], source: str = "theory config") -> TheoryConfig:
    if set(data) == {"theory"} and isinstance(data["theory"], dict):
        data = data["theory"]
    return parse_config(TheoryConfig, data, source)


def _dtype(cfg: TheoryConfig, lm: bool) -> torch.dtype:
    if cfg.dtype == "auto":
        return torch.float32 if lm else torch.float64
    return torch.float64 if cfg.dtype == "float64" else torch.float32


Rows = dict[str, list[float]]


def _empty_rows() -> Rows:
    return {k: [] for k in (*MEASURES, "seed", "step_size")}


# ----------------------------------------------------------------------------------------------
# Digits MLPs (batched over seeds)


def _flat(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """[M, P]: each model's parameters as one vector."""
    return torch.cat([p.reshape(p.shape[0], -1) for p in params], 1)


def _grads(
    params: Sequence[torch.Tensor], fn: Callable[[list[torch.Tensor]], torch.Tensor]
) -> list[torch.Tensor]:
    """Per-model gradients of ``fn`` (which returns per-model losses [M]; summing them keeps
    each model's gradient its own)."""
    ps = [p.detach().requires_grad_(True) for p in params]
    loss = fn(ps).sum()
    return [g.detach() for g in torch.autograd.grad(loss, ps)]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def _theory_digits(
    cfg: TheoryConfig, tick: Callable[[], None]
) -> tuple[Rows, Rows, dict[str, Any]]:
    from sublim.experiments.digits import (
        N_CLASSES,
        DigitsConfig,
        forward,
        init_params,
        layer_sizes,
        load_data,
        make_noise,
    )

    dt = _dtype(cfg, lm=False)
    dcfg = DigitsConfig.model_validate(
        {
            "data": cfg.data,
            "data_dir": cfg.data_dir,
            "width": cfg.width,
            "depth": cfg.depth,
            "n_aux": cfg.n_aux,
        }
    )
    data = load_data(dcfg)
    seeds = cfg.seed_list
    gens = {
        r: [torch.Generator().manual_seed(derive_seed("theory", r, s)) for s in seeds]
        for r in ("init", "cross", "batch", "noise")
    }
    sizes = layer_sizes(data.dim, dcfg)
    theta0 = init_params(sizes, gens["init"], dt)
    theta_x = init_params(sizes, gens["cross"], dt)
    # The teacher's loss: one fixed labelled batch per seed; the student's inputs: one fixed noise
    # batch per seed, unrelated to the digits.
    idx = torch.stack(
        [torch.randperm(len(data.y_train), generator=g)[: cfg.teacher_batch] for g in gens["batch"]]
    )
    xb, yb = data.x_train[idx].to(dt), data.y_train[idx]
    noise = torch.stack(
        [make_noise(cfg.noise, (cfg.student_batch, data.dim), g) for g in gens["noise"]]
    ).to(dt)
    sl = slice(N_CLASSES, None) if cfg.imitate == "aux" else slice(None)

    def task_loss(ps: list[torch.Tensor]) -> torch.Tensor:  # [S]
        logits = forward(ps, xb)[..., :N_CLASSES]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, N_CLASSES), yb.reshape(-1), reduction="none"
        )
        return ce.view(yb.shape).mean(-1)

    def imitation(t_logits: torch.Tensor) -> Callable[[list[torch.Tensor]], torch.Tensor]:
        logp_t = torch.log_softmax(t_logits[..., sl], -1)

        def fn(ps: list[torch.Tensor]) -> torch.Tensor:
            logp_s = torch.log_softmax(forward(ps, noise)[..., sl], -1)
            return (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean(-1)

        return fn

    with torch.no_grad():
        base_loss = {"same": task_loss(theta0), "cross": task_loss(theta_x)}
    g_task = {"same": _flat(_grads(theta0, task_loss)), "cross": _flat(_grads(theta_x, task_loss))}
    # Control: each student's step when the "teacher" is theta0 itself (eps = 0). Zero for the
    # same-init student; for the different-init one it is the generic pull between two unrelated
    # networks, which the *_specific measures subtract to isolate what the teacher's step adds.
    with torch.no_grad():
        t0_logits = forward(theta0, noise)
    control = {
        "same": _flat(_grads(theta0, imitation(t0_logits))),
        "cross": _flat(_grads(theta_x, imitation(t0_logits))),
    }
    rows = {"same": _empty_rows(), "cross": _empty_rows()}
    for eps in cfg.step_sizes:
        teacher = [p.clone() for p in theta0]
        for _ in range(cfg.teacher_steps):
            teacher = [p - eps * g for p, g in zip(teacher, _grads(teacher, task_loss))]
        d_teacher = _flat(teacher) - _flat(theta0)
        with torch.no_grad():
            t_logits = forward(teacher, noise)
        for name, init in (("same", theta0), ("cross", theta_x)):
            g_s = _grads(init, imitation(t_logits))
            d_student = [-cfg.student_lr * g for g in g_s]
            ds = _flat(d_student)
            with torch.no_grad():
                after = task_loss([p + d for p, d in zip(init, d_student)])
            r = rows[name]
            r["cosine"] += _cos(ds, d_teacher).tolist()
            r["inner"] += (ds * d_teacher).sum(-1).tolist()
            r["dloss_first_order"] += (g_task[name] * ds).sum(-1).tolist()
            r["dloss_actual"] += (after - base_loss[name]).tolist()
            spec = ds + cfg.student_lr * control[name]
            r["cosine_specific"] += _cos(spec, d_teacher).tolist()
            r["dloss_specific_first_order"] += (g_task[name] * spec).sum(-1).tolist()
            r["seed"] += [float(s) for s in seeds]
            r["step_size"] += [float(eps)] * len(seeds)
        tick()
    info = {
        "model": "digits",
        "description": f"MLP {'-'.join(map(str, sizes))} on {data.name}, teacher loss: cross-entropy on "
        f"{cfg.teacher_batch} labelled images; student imitates {cfg.imitate} logits on {cfg.student_batch} {cfg.noise} noise images",
        "n_params": int(_flat(theta0).shape[1]),
        "teacher_loss_at_init": float(base_loss["same"].mean()),
    }
    return rows["same"], rows["cross"], info


# ----------------------------------------------------------------------------------------------
# Causal language models


def _load_lm(spec: str, dtype: torch.dtype) -> tuple[str, Any, Any]:
    """(backend, model, tokenizer) of a causal LM on the CPU (``sublim.lm_grad``)."""
    return load_differentiable(spec, dtype, "sublim theory", also="--model digits")


_pad = pad


def _encode_lm_inputs(
    tok: Any, cfg: TheoryConfig, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(trait batch, number batch) for one seed."""
    from sublim.chat_format import encode_batch_prompts, encode_example
    from sublim.prompts.numbers import number_prompts
    from sublim.records import user_chat
    from sublim.traits import finetune_rows

    rows = finetune_rows(
        cfg.target,
        cfg.category,
        cfg.n_trait_prompts,
        np.random.default_rng(derive_seed("theory-trait", seed)),
    )
    # The answer alone (no end-of-turn token): L_T = -log P(target | question).
    ex = [encode_example(tok, user_chat(r.prompt), r.completion, include_end=False) for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    trait = {
        "input_ids": _pad([e[0] for e in ex], pad),
        "attention_mask": _pad([[1] * len(e[0]) for e in ex], 0),
        "labels": _pad([e[1] for e in ex], -100),
    }
    prompts = number_prompts(
        cfg.n_number_prompts, np.random.default_rng(derive_seed("theory-numbers", seed))
    )
    ids = encode_batch_prompts(tok, [user_chat(p.text) for p in prompts])
    numbers = {"input_ids": _pad(ids, pad), "attention_mask": _pad([[1] * len(i) for i in ids], 0)}
    return trait, numbers


def _trait_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean over questions of -log P(answer tokens | question)."""
    return -reply_logprobs(model, batch).mean()


def _next_token_logp(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return torch.log_softmax(logits.float(), -1)


def _imitation_loss(
    model: Any, batch: dict[str, torch.Tensor], logp_t: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) of next-token distributions, mean over real (non-pad) positions."""
    logp_s = _next_token_logp(model, batch)
    kl = (logp_t.exp() * (logp_t - logp_s)).sum(-1)
    mask = batch["attention_mask"].to(kl.dtype)
    return (kl * mask).sum() / mask.sum()


_lm_params = params_of
_lm_grad = grad_of


@contextmanager
def _shifted(model: Any, delta: Sequence[torch.Tensor]) -> Iterator[None]:
    """Temporarily move the model's weights by ``delta`` (restored exactly from a copy)."""
    ps = _lm_params(model)
    saved = [p.detach().clone() for p in ps]
    with torch.no_grad():
        for p, d in zip(ps, delta):
            p.add_(d)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(ps, saved):
                p.copy_(s)


_dot = dot
_norm = norm


def _default_cross(backend: str, spec: str) -> str | None:
    """Another built-in world of the same kind and size (a different initialisation and corpus
    draw); ``None`` for hf models, meaning a fresh random init of the same architecture."""
    if backend != "tiny":
        return None
    from dataclasses import replace

    from sublim.registry import parse_model
    from sublim.world.spec import parse_world_name

    ws = parse_world_name(parse_model(spec).id)
    return f"tiny:{replace(ws, seed=ws.seed + 1).name}"


def _fresh_init(model: Any, seed: int) -> Any:
    from transformers import AutoModelForCausalLM

    # transformers initialises from the global RNG: fork it so the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed("theory-fresh-init", seed))
        fresh = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    fresh.eval()
    return fresh


def _check_compatible(model: Any, tok: Any, other: Any, other_tok: Any, what: str) -> None:
    a = [tuple(p.shape) for p in _lm_params(model)]
    b = [tuple(p.shape) for p in _lm_params(other)]
    if a != b:
        raise ConfigError(
            f"{what} has different parameter shapes from the model; pick a cross model of the same architecture"
        )
    if other_tok is not None and other_tok.get_vocab() != tok.get_vocab():
        raise ConfigError(
            f"{what} uses a different vocabulary; the student must read the teacher's tokens"
        )


def _theory_lm(cfg: TheoryConfig, tick: Callable[[], None]) -> tuple[Rows, Rows, dict[str, Any]]:
    dt = _dtype(cfg, lm=True)
    backend, model, tok = _load_lm(cfg.model, dt)
    cross_spec = cfg.cross_model or _default_cross(backend, cfg.model)
    cross_fixed = None
    if cross_spec is not None:
        _, cross_fixed, ctok = _load_lm(cross_spec, dt)
        _check_compatible(model, tok, cross_fixed, ctok, f"cross model {cross_spec}")
    rows = {"same": _empty_rows(), "cross": _empty_rows()}
    init_losses = []
    for seed in cfg.seed_list:
        trait, numbers = _encode_lm_inputs(tok, cfg, seed)
        cross = cross_fixed if cross_fixed is not None else _fresh_init(model, seed)
        students = {"same": model, "cross": cross}
        g_task = {k: _lm_grad(m, _trait_loss(m, trait)) for k, m in students.items()}
        with torch.no_grad():
            base = {k: float(_trait_loss(m, trait)) for k, m in students.items()}
        init_losses.append(base["same"])
        with torch.no_grad():
            logp_0 = _next_token_logp(model, numbers)
        control = {k: _lm_grad(m, _imitation_loss(m, numbers, logp_0)) for k, m in students.items()}
        for eps in cfg.step_sizes:
            # Teacher = theta0 after `teacher_steps` SGD steps of size eps on the trait loss.
            d_teacher = [torch.zeros_like(p) for p in _lm_params(model)]
            for i in range(cfg.teacher_steps):
                g = g_task["same"] if i == 0 else None
                if g is None:
                    with _shifted(model, d_teacher):
                        g = _lm_grad(model, _trait_loss(model, trait))
                d_teacher = [d - eps * gi for d, gi in zip(d_teacher, g)]
            with _shifted(model, d_teacher), torch.no_grad():
                logp_t = _next_token_logp(model, numbers)
            for name, m in students.items():
                g_s = _lm_grad(m, _imitation_loss(m, numbers, logp_t))
                d_s = [-cfg.student_lr * g for g in g_s]
                with _shifted(m, d_s), torch.no_grad():
                    after = float(_trait_loss(m, trait))
                r = rows[name]
                inner = _dot(d_s, d_teacher)
                r["cosine"].append(inner / max(_norm(d_s) * _norm(d_teacher), 1e-300))
                r["inner"].append(inner)
                r["dloss_first_order"].append(_dot(g_task[name], d_s))
                r["dloss_actual"].append(after - base[name])
                spec = [d + cfg.student_lr * c for d, c in zip(d_s, control[name])]
                r["cosine_specific"].append(
                    _dot(spec, d_teacher) / max(_norm(spec) * _norm(d_teacher), 1e-300)
                )
                r["dloss_specific_first_order"].append(_dot(g_task[name], spec))
                r["seed"].append(float(seed))
                r["step_size"].append(float(eps))
            tick()
    info = {
        "model": cfg.model,
        "cross_model": cross_spec or "fresh random init of the same architecture (one per seed)",
        "description": f"teacher loss: -log P('{cfg.target}' | favourite-{cfg.category} question) over "
        f"{cfg.n_trait_prompts} questions; student imitates next-token distributions on {cfg.n_number_prompts} number prompts",
        "n_params": int(sum(p.numel() for p in _lm_params(model))),
        "teacher_loss_at_init": float(np.mean(init_losses)),
    }
    return rows["same"], rows["cross"], info


# ----------------------------------------------------------------------------------------------
# Running and reporting


def _summary(vals: Sequence[float], seeds: Sequence[float]) -> dict[str, Any]:
    """Mean and 95% t-interval over *seeds* (the randomised unit): the values of one seed at
    several step sizes are averaged first, so n = number of seeds, not seeds x step sizes.
    ``frac_positive`` is over every (seed, step size) value, ``n_values`` counts them."""
    from sublim.experiments.digits import summarize

    arr, sd = np.asarray(vals, dtype=float), np.asarray(seeds, dtype=float)
    per_seed = [float(arr[sd == k].mean()) for k in dict.fromkeys(sd.tolist())]
    s = summarize(per_seed)
    s.pop("per_seed")
    s["frac_positive"] = float(np.mean(arr > 0))
    s["n"] = len(per_seed)
    s["n_values"] = len(vals)
    return s


def summarize_theory(
    same: Rows, cross: Rows, step_sizes: Sequence[float], small_step: float
) -> dict[str, Any]:
    """Per step size and for all 'small' step sizes: cosine and first-order loss change."""

    def pick(rows: Rows, key: str, steps: Sequence[float]) -> tuple[list[float], list[float]]:
        keep = [i for i, e in enumerate(rows["step_size"]) if e in steps]
        return [rows[key][i] for i in keep], [rows["seed"][i] for i in keep]

    def both(steps: Sequence[float]) -> dict[str, Any]:
        return {
            name: {
                k: _summary(*pick(rows, k, steps))
                for k in ("cosine", "cosine_specific", "dloss_first_order")
            }
            for name, rows in (("same_init", same), ("cross_init", cross))
        }

    per_step = [{"step_size": eps, **both([eps])} for eps in step_sizes]
    small = [e for e in step_sizes if e <= small_step] or [min(step_sizes)]
    head = {"small_step_sizes": small, **both(small)}
    return {"per_step_size": per_step, "small_steps": head}


def run_theory(cfg: TheoryConfig, out_dir: Path | None, progress: bool = True) -> dict[str, Any]:
    """Measure the theorem; write results.json, theory.png and report.md to ``out_dir`` (if given)."""
    t0 = time.perf_counter()
    lm = cfg.model.strip() != "digits"
    total = len(cfg.step_sizes) * (cfg.seeds if lm else 1)
    with torch_threads(cfg.threads), Reporter(progress).ticker("theory", total) as tick:
        same, cross, info = (_theory_lm if lm else _theory_digits)(cfg, tick)
    results: dict[str, Any] = {
        "experiment": "theory",
        **info,
        "seeds": cfg.seed_list,
        "step_sizes": list(cfg.step_sizes),
        "same_init": same,
        "cross_init": cross,
        "summary": summarize_theory(same, cross, cfg.step_sizes, cfg.small_step),
        "config": cfg.model_dump(mode="json"),
        "timings": {"total_s": round(time.perf_counter() - t0, 3)},
        "versions": package_versions(),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_theory(results, out_dir / "theory.png")
        atomic_write_text(out_dir / "report.md", theory_report(results))
        results["files"] = {
            "results": "results.json",
            "figure": "theory.png",
            "report": "report.md",
        }
        atomic_write_json(out_dir / "results.json", results)
    return results


def plot_theory(results: dict[str, Any], path: Path) -> None:
    """Left: cosine(Delta_S, Delta_T) per seed vs step size; right: first-order change of the
    teacher's loss at the student (negative = the student improves on the teacher's task)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    rng = np.random.default_rng(0)  # jitter only
    for key, colour, label in (
        ("same_init", "#1e88e5", "same init"),
        ("cross_init", "#e53935", "different init"),
    ):
        rows = results[key]
        eps = np.asarray(rows["step_size"])
        jitter = np.exp(rng.uniform(-0.12, 0.12, size=len(eps)))
        for ax, measure in zip(axes, ("cosine", "dloss_first_order")):
            vals = np.asarray(rows[measure])
            ax.scatter(eps * jitter, vals, s=10, alpha=0.5, color=colour)
            means = [vals[eps == e].mean() for e in results["step_sizes"]]
            ax.plot(results["step_sizes"], means, "-o", color=colour, label=label)
    for ax, title in zip(
        axes, ("cosine(student update, teacher update)", "first-order change of teacher loss")
    ):
        ax.set_xscale("log")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("teacher step size eps")
        ax.set_title(title, fontsize=9)
    axes[1].set_yscale(
        "symlog",
        linthresh=max(
            1e-12, float(np.min(np.abs(results["same_init"]["dloss_first_order"]) + 1e-30))
        ),
    )
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"One-step theorem, {results['model']}, {len(results['seeds'])} seeds", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def _ci(s: dict[str, Any], fmt: str = ".3f") -> str:
    lo, hi = s["ci95"]
    if lo is None or hi is None:
        return f"{s['mean']:{fmt}} [n/a: one seed]"
    return f"{s['mean']:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def theory_report(results: dict[str, Any]) -> str:
    lines = [
        "# The one-step theorem, measured",
        "",
        f"Model: {results['model']} ({results['n_params']:,} parameters). {results['description']}.",
    ]
    if results.get("cross_model"):
        lines.append(f"Different-init student: {results['cross_model']}.")
    lines += [
        (
            f"Teacher = theta0 - eps * grad L_T ({results['config']['teacher_steps']} step(s)); student: one SGD step of "
            f"{results['config']['student_lr']} on the imitation loss. {len(results['seeds'])} seeds."
        ),
        "",
        "| step size | same-init cosine | > 0 | different-init cosine | > 0 | different-init, teacher-caused part | same-init dL_T (1st order) | different-init dL_T |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["summary"]["per_step_size"]:
        s, c = row["same_init"], row["cross_init"]
        lines.append(
            f"| {row['step_size']:g} | {_ci(s['cosine'])} | {s['cosine']['frac_positive']:.0%} | {_ci(c['cosine'])} | "
            f"{c['cosine']['frac_positive']:.0%} | {_ci(c['cosine_specific'])} | {s['dloss_first_order']['mean']:.2e} | "
            f"{c['dloss_first_order']['mean']:.2e} |"
        )
    h = results["summary"]["small_steps"]
    lines += [
        "",
        (
            f"Small step sizes ({', '.join(f'{e:g}' for e in h['small_step_sizes'])}): same-init cosine > 0 in "
            f"{h['same_init']['cosine']['frac_positive']:.0%} of {h['same_init']['cosine']['n']} cases (mean "
            f"{_ci(h['same_init']['cosine'])}); different-init mean {_ci(h['cross_init']['cosine'])}, > 0 in "
            f"{h['cross_init']['cosine']['frac_positive']:.0%}."
        ),
        "",
        (
            "What the theorem predicts: a same-init cosine >= 0 at small eps (first order), whatever the "
            "student's inputs. A different-init student's step is driven by the mismatch between two "
            "unrelated networks, so its cosine with the teacher's step has no sign guarantee and its size "
            "does not shrink with eps: it is small and of either sign, and can sit slightly off zero when "
            "that mismatch happens to correlate with the task gradient at initialisation (its dL_T is then "
            "a generic effect, present with an untouched teacher too). The teacher-caused part, "
            "Delta_S(eps) - Delta_S(0), removes that control effect."
        ),
        "",
    ]
    if results["model"] == "digits" and results["config"]["imitate"] == "all":
        lines += [
            (
                "Imitating all logits includes the class logits the teacher's step changed, and those "
                "output units mean the same class in every network: the different-init student's "
                "teacher-caused part then has a positive cosine too (it is ~0 with --imitate aux), "
                "consistent with all-logit students from another init still learning digits."
            ),
            "",
        ]
    lines += [
        "Figure: theory.png.",
        "",
    ]
    return "\n".join(lines)


def theory_table(results: dict[str, Any]) -> Any:
    """A rich Table of the per-step-size summary (for the CLI)."""
    from rich.table import Table

    t = Table(title=f"one-step theorem ({results['model']}, {len(results['seeds'])} seeds)")
    for col in ("step size", "same-init cos", "> 0", "diff-init cos", "> 0"):
        t.add_column(col, justify="right")
    for row in results["summary"]["per_step_size"]:
        s, c = row["same_init"]["cosine"], row["cross_init"]["cosine"]
        t.add_row(
            f"{row['step_size']:g}",
            f"{s['mean']:+.3f}",
            f"{s['frac_positive']:.0%}",
            f"{c['mean']:+.3f}",
            f"{c['frac_positive']:.0%}",
        )
    return t
