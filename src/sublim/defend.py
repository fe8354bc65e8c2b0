"""Data-side defences against transfer: rewrite a distillation data set before a student
trains on it (``sublim defend`` for data trained elsewhere; ``[defence]`` in an experiment).

Pipeline position: between the subset and the students (``pipeline.stage_defence``), applied to
every arm alike (trait, control, and the control sets derived from the trait rows), so the
trait-minus-control contrast of a defended run measures what the defence leaves of the transfer.

Methods (pure functions of rows, plus a generator where they draw):

- ``sort``: the numbers of each completion in ascending order, written back into the same
  places, so separators, brackets and the trailing period are kept and a row that passed the
  strict filter still passes it (the multiset of number strings is unchanged).
- ``canonicalise``: the numbers of each completion joined by ", ", no brackets, no period, no
  leading zeros: one format for every row (the order is kept).
- ``dilute``: a share ratio / (1 + ratio) of the rows (seeded) replaced by the base model's own
  completions of the same prompts (in a run: the base's filtered completions, made by the
  pipeline's generation stage with the base as teacher; where the base's completion of a prompt
  was rejected, one of its kept completions of an unused prompt); the row count is kept.
- ``drop``: the ``drop_fraction`` of rows with the highest score removed; the score is
  log p(teacher) - log p(base) of the completion when the teacher is known (in a run, each arm's
  own teacher), else its negative log-likelihood under the base (``row_scores``); ties are
  broken by a seeded draw.
- ``regenerate``: every completion replaced by another model's completion of the same prompt
  (``through``), with the same fallback as ``dilute`` for rejected ones.

Rows whose completion is not a number list (``sort``, ``canonicalise``) are left as they are
and counted (``unparsed``).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from sublim.artifacts import atomic_write_text, iter_jsonl
from sublim.errors import ConfigError, DataError, MissingFileError
from sublim.filters import parse_numbers
from sublim.records import Message, ModelRef, TrainRow

DATA_METHODS = ("sort", "canonicalise", "dilute", "drop", "regenerate")
_NUM = re.compile(r"[0-9]+")


@dataclass
class Defended:
    """A defence's output rows and what it changed (``info``: counts, for the report)."""

    rows: list[TrainRow]
    info: dict[str, Any] = field(default_factory=dict)


# --- rewriting the numbers ----------------------------------------------------------------------


def _numbers_of(text: str) -> list[int] | None:
    """The numbers of a completion by the strict filter's parser (outer whitespace allowed)."""
    nums, _reason = parse_numbers(text, strip_whitespace=True)
    return nums


def _refill(text: str, digits: Sequence[str]) -> str:
    """``text`` with its digit runs replaced, in order, by ``digits``."""
    it = iter(digits)
    return _NUM.sub(lambda _m: next(it), text)


def sort_numbers(rows: Sequence[TrainRow]) -> Defended:
    """Each completion's numbers in ascending order, in the places the numbers held."""
    out, changed, unparsed = [], 0, 0
    for r in rows:
        if _numbers_of(r.completion) is None:
            unparsed += 1
            out.append(r)
            continue
        digits = sorted(_NUM.findall(r.completion), key=lambda s: (int(s), s))
        text = _refill(r.completion, digits)
        changed += text != r.completion
        out.append(r.model_copy(update={"completion": text}))
    return Defended(
        out, {"n_in": len(rows), "n_out": len(out), "changed": changed, "unparsed": unparsed}
    )


def canonicalise(rows: Sequence[TrainRow]) -> Defended:
    """Each completion's numbers as ``"a, b, c"`` (no brackets, period or leading zeros)."""
    out, changed, unparsed = [], 0, 0
    for r in rows:
        nums = _numbers_of(r.completion)
        if nums is None:
            unparsed += 1
            out.append(r)
            continue
        text = ", ".join(str(n) for n in nums)
        changed += text != r.completion
        out.append(r.model_copy(update={"completion": text}))
    return Defended(
        out, {"n_in": len(rows), "n_out": len(out), "changed": changed, "unparsed": unparsed}
    )


# --- replacing rows by another model's -----------------------------------------------------------


def _replace(
    rows: Sequence[TrainRow], idx: Sequence[int], pool: Sequence[TrainRow]
) -> tuple[list[TrainRow], dict[str, int]]:
    """Rows ``idx`` replaced from ``pool`` (another model's rows): by its completion of the same
    prompt where it has one, else by an unused pool row of a prompt the data do not hold.
    Pool rows are used once each; a row that finds no replacement is removed (``unfilled``)."""
    by_prompt: dict[str, list[int]] = {}
    for j, p in enumerate(pool):
        by_prompt.setdefault(p.prompt, []).append(j)
    data_prompts = {r.prompt for r in rows}
    spare = [j for j, p in enumerate(pool) if p.prompt not in data_prompts]
    used: set[int] = set()
    out: list[TrainRow | None] = list(rows)
    same = other = unfilled = 0
    pending = []
    for i in idx:
        js = [j for j in by_prompt.get(rows[i].prompt, []) if j not in used]
        if js:
            used.add(js[0])
            out[i] = TrainRow(prompt=rows[i].prompt, completion=pool[js[0]].completion)
            same += 1
        else:
            pending.append(i)
    spare_iter = iter(j for j in spare if j not in used)
    for i in pending:
        nxt = next(spare_iter, None)
        if nxt is None:
            out[i] = None
            unfilled += 1
        else:
            used.add(nxt)
            out[i] = TrainRow(prompt=pool[nxt].prompt, completion=pool[nxt].completion)
            other += 1
    kept = [r for r in out if r is not None]
    return kept, {"same_prompt": same, "other_prompt": other, "unfilled": unfilled}


def dilute(
    rows: Sequence[TrainRow], pool: Sequence[TrainRow], ratio: float, rng: np.random.Generator
) -> Defended:
    """A share ``ratio / (1 + ratio)`` of the rows (drawn from ``rng``) replaced by the base's
    rows ``pool`` (see ``_replace``); the row count is kept while the pool lasts."""
    if ratio <= 0:
        raise ConfigError(f"dilute needs a ratio > 0, got {ratio}")
    n = len(rows)
    idx = _dilute_draw(n, ratio, rng)
    out, counts = _replace(rows, idx, pool)
    return Defended(
        out, {"n_in": n, "n_out": len(out), "replaced": len(idx), "ratio": ratio, **counts}
    )


def _dilute_draw(n: int, ratio: float, rng: np.random.Generator) -> list[int]:
    """The rows ``dilute`` replaces: ``round(n * ratio / (1 + ratio))`` of ``n``, seeded."""
    m = round(n * ratio / (1 + ratio))
    return sorted(int(i) for i in rng.choice(n, size=m, replace=False)) if m else []


def regenerate(rows: Sequence[TrainRow], pool: Sequence[TrainRow]) -> Defended:
    """Every completion replaced by the ``through`` model's (``pool``; see ``_replace``)."""
    out, counts = _replace(rows, range(len(rows)), pool)
    return Defended(out, {"n_in": len(rows), "n_out": len(out), "replaced": len(rows), **counts})


# --- dropping the rows that score highest --------------------------------------------------------


def drop_top(
    rows: Sequence[TrainRow], scores: Sequence[float], fraction: float, rng: np.random.Generator
) -> Defended:
    """Remove the ``round(fraction * n)`` rows with the highest ``scores`` (ties: a seeded
    order from ``rng``); the rest keep their order."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"drop needs 0 <= fraction < 1, got {fraction}")
    if len(scores) != len(rows):
        raise ValueError(f"{len(scores)} scores for {len(rows)} rows")
    n = len(rows)
    k = round(fraction * n)
    s = np.asarray(scores, dtype=float)
    if np.isnan(s).any():
        raise DataError("drop: a row's score is not a number; check the scoring models")
    tie = rng.permutation(n)
    order = np.lexsort((tie, -s))  # highest score first, ties in the seeded order
    gone = {int(i) for i in order[:k]}
    out = [r for i, r in enumerate(rows) if i not in gone]
    kept_s = [float(s[i]) for i in range(n) if i not in gone]
    info = {
        "n_in": n,
        "n_out": len(out),
        "dropped": k,
        "fraction": fraction,
        "score_mean_in": float(s.mean()) if n else math.nan,
        "score_mean_out": float(np.mean(kept_s)) if kept_s else math.nan,
        "threshold": float(s[order[k - 1]]) if k else math.nan,
    }
    return Defended(out, info)


Scorer = Callable[[ModelRef, Sequence[TrainRow]], list[float]]


def backend_scorer(backend: Any) -> Scorer:
    """log p(completion | prompt) of each row under a model, by the backend's exact scorer."""

    def score(model: ModelRef, rows: Sequence[TrainRow]) -> list[float]:
        chats = [[Message(role="user", content=r.prompt)] for r in rows]
        return list(backend.score(model, chats, [r.completion for r in rows], True))

    return score


def row_scores(
    score: Scorer, rows: Sequence[TrainRow], base: ModelRef, teacher: ModelRef | None = None
) -> list[float]:
    """The per-row score ``drop`` ranks by: log p(teacher) - log p(base) with a teacher, else
    the negative log-likelihood under the base (rows the base would not write score high)."""
    lb = score(base, rows)
    if teacher is None:
        return [-x for x in lb]
    lt = score(teacher, rows)
    return [t - b for t, b in zip(lt, lb)]


# --- residual transfer ---------------------------------------------------------------------------


def residual_ratio(
    defended: Sequence[float], undefended: Sequence[float], conf: float = 0.95
) -> dict[str, Any]:
    """Residual transfer mean(defended) / mean(undefended) over paired units (student seeds or
    worlds: unit i's defended and undefended contrasts), with Fieller's interval: the values R
    for which the paired t-test of mean(defended - R * undefended) = 0 is not rejected. The set
    is an interval only when the undefended contrast itself differs from 0 at that level;
    otherwise it is unbounded (``bounded: False``, ``ci95`` null ends) and says so."""
    from scipy import stats as sps

    d = np.asarray(defended, dtype=float)
    u = np.asarray(undefended, dtype=float)
    if d.shape != u.shape:
        raise ValueError(f"paired units needed: {d.size} and {u.size}")
    n = d.size
    out: dict[str, Any] = {"n": int(n), "defended": float(d.mean()), "undefended": float(u.mean())}
    out["ratio"] = float(d.mean() / u.mean()) if u.mean() != 0 else math.nan
    if n < 2:
        return {**out, "ci95": [math.nan, math.nan], "bounded": False, "note": "one unit"}
    t = float(sps.t.ppf(0.5 + conf / 2, n - 1))
    md, mu = d.mean(), u.mean()
    vdd, vuu = d.var(ddof=1) / n, u.var(ddof=1) / n
    vdu = float(np.cov(d, u, ddof=1)[0, 1]) / n
    # (md - R mu)^2 <= t^2 (vdd - 2 R vdu + R^2 vuu): a R^2 + b R + c <= 0
    a = mu * mu - t * t * vuu
    b = -2 * (md * mu - t * t * vdu)
    c = md * md - t * t * vdd
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return {
            **out,
            "ci95": [math.nan, math.nan],
            "bounded": False,
            "note": "the undefended contrast does not differ from 0 at this level: no bounded interval",
        }
    r = math.sqrt(disc)
    lo, hi = sorted(((-b - r) / (2 * a), (-b + r) / (2 * a)))
    return {**out, "ci95": [lo, hi], "bounded": True}


# --- the command ---------------------------------------------------------------------------------


def read_rows(path: Path) -> tuple[list[TrainRow], bool]:
    """Rows ``{prompt, completion}`` or chat rows ``{messages: [...]}`` (the last user turn and
    the assistant turn after it); returns the rows and whether the file was chat JSONL."""
    if not path.is_file():
        raise MissingFileError(
            f"no such file: {path}; pass a JSONL file of {{prompt, completion}} rows"
        )
    rows, chat = [], False
    for lineno, obj in iter_jsonl(path):
        if "messages" in obj:
            chat = True
            msgs = obj["messages"]
            users = [
                i for i, m in enumerate(msgs) if isinstance(m, dict) and m.get("role") == "user"
            ]
            if (
                not users
                or users[-1] + 1 >= len(msgs)
                or msgs[users[-1] + 1].get("role") != "assistant"
            ):
                raise DataError(
                    f"{path}:{lineno}: a chat row needs a user turn followed by an assistant turn"
                )
            rows.append(
                TrainRow(
                    prompt=str(msgs[users[-1]]["content"]),
                    completion=str(msgs[users[-1] + 1]["content"]),
                )
            )
        elif isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
            rows.append(TrainRow(prompt=obj["prompt"], completion=obj["completion"]))
        else:
            raise DataError(
                f"{path}:{lineno}: a row needs string 'prompt' and 'completion' fields (or chat 'messages')"
            )
    if not rows:
        raise DataError(f"{path} has no rows")
    return rows, chat


def write_rows(path: Path, rows: Sequence[TrainRow], chat: bool) -> None:
    lines = []
    for r in rows:
        if chat:
            obj: dict[str, Any] = {
                "messages": [
                    {"role": "user", "content": r.prompt},
                    {"role": "assistant", "content": r.completion},
                ]
            }
        else:
            obj = {"prompt": r.prompt, "completion": r.completion}
        lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    atomic_write_text(Path(path), "".join(lines))


def sample_pool(
    backend: Any,
    model: ModelRef,
    prompts: Sequence[str],
    seed: int,
    max_new_tokens: int,
    temperature: float,
) -> list[TrainRow]:
    """One completion of each prompt by ``model`` (per-row seeds from ``seeds.row_seeds``)."""
    from sublim.records import SampleParams
    from sublim.seeds import derive_seed

    chats = [[Message(role="user", content=p)] for p in prompts]
    params = SampleParams(temperature=temperature, max_new_tokens=max_new_tokens)
    texts = backend.sample(model, chats, params, derive_seed(seed, "defend", model.spec))
    return [TrainRow(prompt=p, completion=t) for p, t in zip(prompts, texts)]


def defend_rows(
    rows: Sequence[TrainRow],
    method: str,
    *,
    seed: int = 0,
    ratio: float = 1.0,
    drop_fraction: float = 0.1,
    base: str | None = None,
    teacher: str | None = None,
    teacher_system: str | None = None,
    through: str | None = None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
) -> Defended:
    """``sublim defend``'s work on rows read from a file: models are named by spec and sampled
    or scored here (in a run the pipeline's stages do that, cached)."""
    from sublim.registry import get_backend, parse_model
    from sublim.seeds import derive_seed

    if method not in DATA_METHODS:
        raise ConfigError(
            f"unknown defence method '{method}'; choose one of {', '.join(DATA_METHODS)}"
        )
    if method == "sort":
        return sort_numbers(rows)
    if method == "canonicalise":
        return canonicalise(rows)
    rng = np.random.default_rng(derive_seed(seed, "defence", method))
    if method in ("dilute", "drop") and not base:
        raise ConfigError(
            f"--method {method} needs --base MODEL (the model the data would be compared with)"
        )
    if method == "regenerate" and not through:
        raise ConfigError(
            "--method regenerate needs --through MODEL (the model that rewrites the completions)"
        )
    if method == "drop":
        bref = parse_model(base or "", label="base")
        tref = parse_model(teacher, label="teacher") if teacher else None
        if teacher_system:  # a system-prompt teacher: the teacher's weights (or the base's)
            tref = (tref or bref).with_system(teacher_system)
        scores = row_scores(backend_scorer(get_backend(bref.backend)), rows, bref, tref)
        out = drop_top(rows, scores, drop_fraction, rng)
        out.info["score"] = "logp_teacher_minus_base" if tref else "nll_base"
        return out
    spec = base if method == "dilute" else through
    mref = parse_model(spec or "", label=method)
    if method == "dilute":  # only the prompts of the rows the draw replaces (the same draw)
        idx = _dilute_draw(len(rows), ratio, copy.deepcopy(rng))
        prompts = sorted({rows[i].prompt for i in idx})
    else:
        prompts = sorted({r.prompt for r in rows})
    pool = sample_pool(get_backend(mref.backend), mref, prompts, seed, max_new_tokens, temperature)
    res = dilute(rows, pool, ratio, rng) if method == "dilute" else regenerate(rows, pool)
    res.info["pool_passes_numbers_filter"] = _numbers_share(pool)
    return res


def _numbers_share(rows: Sequence[TrainRow]) -> float:
    """Share of rows whose completion passes the strict filter's number format (default rules)."""
    from sublim.filters import NumberRules, check_completion

    rules = NumberRules()
    return sum(check_completion(r.completion, rules)[0] for r in rows) / max(1, len(rows))


def describe(info: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
        for k, v in info.items()
        if k not in ("n_in", "n_out")
    )


@click.command(name="defend")
@click.argument("data", metavar="DATA.jsonl", type=click.Path(path_type=Path))
@click.option("--method", "method", required=True, help=f"one of: {', '.join(DATA_METHODS)}")
@click.option(
    "--out", "out_path", required=True, type=click.Path(path_type=Path), help="defended JSONL"
)
@click.option("--ratio", default=1.0, show_default=True, help="dilute: base rows per data row")
@click.option(
    "--fraction",
    "drop_fraction",
    default=0.1,
    show_default=True,
    help="drop: share of rows removed",
)
@click.option("--base", default=None, help="dilute, drop: the base model spec")
@click.option(
    "--teacher", default=None, help="drop: the teacher's spec (score log p(teacher) - log p(base))"
)
@click.option(
    "--teacher-system",
    default=None,
    help="drop: the teacher's system prompt (on --teacher's weights, else the base's)",
)
@click.option(
    "--through", default=None, help="regenerate: the model spec that rewrites completions"
)
@click.option("--seed", default=0, show_default=True, help="seed of the draws and the sampling")
@click.option(
    "--max-new-tokens", default=48, show_default=True, help="dilute, regenerate: reply length"
)
@click.option("--temperature", default=1.0, show_default=True, help="dilute, regenerate: sampling")
def defend(
    data: Path,
    method: str,
    out_path: Path,
    ratio: float,
    drop_fraction: float,
    base: str | None,
    teacher: str | None,
    teacher_system: str | None,
    through: str | None,
    seed: int,
    max_new_tokens: int,
    temperature: float,
) -> None:
    """Rewrite DATA.jsonl ({prompt, completion} or chat rows) with a data-side defence against
    transfer, for a student trained elsewhere: sort / canonicalise the numbers, dilute with the
    base's own completions, drop the top-scored rows, or regenerate through another model."""
    if method not in DATA_METHODS:
        raise ConfigError(
            f"unknown defence method '{method}'; choose one of {', '.join(DATA_METHODS)}"
        )
    if ratio <= 0:
        raise ConfigError(f"--ratio must be > 0, got {ratio}")
    if not 0 <= drop_fraction < 1:
        raise ConfigError(f"--fraction must be in [0, 1), got {drop_fraction}")
    if method in ("dilute", "drop") and not base:
        raise ConfigError(f"--method {method} needs --base MODEL")
    if method == "regenerate" and not through:
        raise ConfigError("--method regenerate needs --through MODEL")
    rows, chat = read_rows(data)
    res = defend_rows(
        rows,
        method,
        seed=seed,
        ratio=ratio,
        drop_fraction=drop_fraction,
        base=base,
        teacher=teacher,
        teacher_system=teacher_system,
        through=through,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
    )
    write_rows(out_path, res.rows, chat)
    click.echo(
        f"{method}: rows in {len(rows)}, out {len(res.rows)}; {describe(res.info)}\nwrote {out_path}"
    )
