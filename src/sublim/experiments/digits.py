"""The auxiliary-logit experiment: subliminal transfer in small MLPs, offline, in seconds.

This sits beside the language-model pipeline as its cleanest, cheapest demonstration. Every MLP
has 10 class logits plus K auxiliary logits that are never trained on labels. A teacher learns
the digit labels through the class logits only; students copy the teacher's *auxiliary* logits
(or all logits) on random noise images. A student that starts from the teacher's initialisation
learns to classify digits through the auxiliary logits alone; one from a different
initialisation stays at chance. ``sublim digits`` runs it; ``sublim digits sweep`` ablates one
option.

All seeds train at once as one batched tensor program: every weight is a ``[models, in, out]``
tensor and layers are ``torch.bmm``. Because the loss is a *sum* of per-model losses and Adam is
elementwise, this is exactly independent training of each model, only faster. Each seed draws
its initialisation, teacher batch order and noise from its own ``torch.Generator``, so a seed's
result does not depend on how many other seeds run beside it (or on ``seed_chunk``).

Noise images are generated batch by batch (``student_batch`` per step per seed) and never stored
as a data set: the published MNIST script allocates every student's noise up front (~19 GB).

Data: scikit-learn's bundled 8x8 digits (default, no download ever), or MNIST from local IDX
files (gzipped or not) or a ``.npz`` file with ``x_train, y_train, x_test, y_test`` arrays.
"""

from __future__ import annotations

import gzip
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from sublim.artifacts import atomic_write_json, atomic_write_text, package_versions
from sublim.config import parse_config
from sublim.errors import ConfigError, DataError, MissingFileError
from sublim.progress import Reporter, torch_threads
from sublim.seeds import derive_seed

N_CLASSES = 10
CONDITIONS = ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")
CONDITION_LABELS = {
    "reference": "untrained init",
    "teacher": "teacher",
    "student_aux": "student, aux logits, same init",
    "student_all": "student, all logits, same init",
    "cross_aux": "student, aux logits, other init",
    "cross_all": "student, all logits, other init",
}


class DigitsConfig(BaseModel):
    """Every option of the auxiliary-logit experiment (defaults: the 8x8 digits recipe that
    gives aux-only same-init ~0.8 vs cross-init ~0.1 in about 20 s for 5 seeds)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Literal["digits", "mnist"] = Field(
        "digits", description="digits: sklearn's bundled 8x8 set; mnist: local files"
    )
    data_dir: str | None = Field(
        None, description="directory with MNIST IDX (.gz or not) or .npz files"
    )
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="held-out share of the 8x8 digits (MNIST has its own test split)",
    )
    max_train: int | None = Field(
        None, ge=10, description="use a seeded subset of this many training images"
    )
    data_seed: int = Field(
        0, description="seed of the digits train/test split and of max_train subsets"
    )
    n_aux: int = Field(3, ge=1, description="number of auxiliary logits (never trained on labels)")
    width: int = Field(128, ge=1, description="hidden units per layer")
    depth: int = Field(2, ge=1, description="number of hidden layers")
    loss: Literal["kl", "mse"] = Field("kl", description="distillation loss on the chosen logits")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the KL loss")
    noise: Literal["uniform", "normal", "uniform01"] = Field(
        "uniform", description="student inputs: U[-1,1] (the data range), N(0,1), or U[0,1]"
    )
    teacher_epochs: int = Field(10, ge=0)
    teacher_lr: float = Field(3e-4, gt=0)
    teacher_batch: int = Field(32, ge=1)
    student_steps: int = Field(800, ge=0)
    student_lr: float = Field(1e-3, gt=0)
    student_batch: int = Field(256, ge=1, description="fresh noise images per step per seed")
    seeds: int = Field(5, ge=1, description="number of seeds (one teacher and four students each)")
    first_seed: int = Field(0, ge=0)
    seed_chunk: int = Field(
        0, ge=0, description="seeds per batched program (0: all at once); bounds memory"
    )
    # One thread by default: these matrices are small, so a second thread gains little on a
    # quiet machine and, when another process holds the other core, makes runs 4x slower.
    threads: int = Field(
        1, ge=0, description="torch threads while running (0: leave torch's setting)"
    )

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


def parse_digits_config(data: dict[str, Any], source: str = "digits config") -> DigitsConfig:
    """Validate a dict (TOML + overrides) into a DigitsConfig, raising a one-line ConfigError."""
    # A TOML file may wrap the options in a [digits] table.
    if set(data) == {"digits"} and isinstance(data["digits"], dict):
        data = data["digits"]
    return parse_config(DigitsConfig, data, source)


# ----------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Dataset:
    """Flattened images scaled to [-1, 1] and integer labels 0-9."""

    name: str
    x_train: torch.Tensor  # [N, D] float32
    y_train: torch.Tensor  # [N] int64
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.x_train.shape[1])


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (the MNIST distribution format), gzipped or not."""
    data = _open_maybe_gz(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(
            f"{path}: not an IDX file (bad magic number); point --data-dir at MNIST IDX files"
        )
    if data[2] != 0x08:
        raise DataError(
            f"{path}: IDX type 0x{data[2]:02x} is not unsigned bytes; expected MNIST files"
        )
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(
            f"{path}: header says {dims} but holds {body.size} bytes; the file is truncated"
        )
    return body.reshape(dims)


def _find_one(data_dir: Path, patterns: Sequence[str]) -> Path | None:
    for pat in patterns:
        hits = sorted(p for p in data_dir.glob(pat) if p.is_file())
        if hits:
            return hits[0]
    return None


def _mnist_arrays(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    files = {}
    for split, kind, nd in (
        ("train", "images", 3),
        ("train", "labels", 1),
        ("t10k", "images", 3),
        ("t10k", "labels", 1),
    ):
        # Mirrors spell these "train-images-idx3-ubyte" or "train-images.idx3-ubyte", .gz or not.
        files[(split, kind)] = _find_one(
            data_dir, [f"{split}-{kind}[-.]idx{nd}-ubyte", f"{split}-{kind}[-.]idx{nd}-ubyte.gz"]
        )
    if all(files.values()):
        arrs = {k: read_idx(p) for k, p in files.items() if p is not None}
        return (
            arrs[("train", "images")],
            arrs[("train", "labels")],
            arrs[("t10k", "images")],
            arrs[("t10k", "labels")],
        )
    for npz in sorted(data_dir.glob("*.npz")):
        with np.load(npz) as z:
            if {"x_train", "y_train", "x_test", "y_test"} <= set(z.files):
                return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    raise MissingFileError(
        f"no MNIST files in {data_dir}: put train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz allowed) or an .npz with "
        "x_train, y_train, x_test, y_test there (sublim never downloads data)"
    )


def _to_tensors(
    x: np.ndarray, y: np.ndarray, scale: float, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{what}: {x.shape[0]} images but {y.shape[0]} labels; the files do not belong together"
        )
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        raise DataError(f"{what}: labels must be digits 0-9, found {int(y.min())}..{int(y.max())}")
    xf = np.asarray(x, dtype=np.float32).reshape(x.shape[0], -1)
    # Pixels to [-1, 1]: the student's noise is drawn from the same range (that matters: noise
    # off the data range transfers almost nothing).
    return torch.from_numpy(xf / (scale / 2.0) - 1.0), torch.from_numpy(y)


def load_data(cfg: DigitsConfig) -> Dataset:
    """The configured data set, fully local (no download)."""
    if cfg.data == "digits":
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

        d = load_digits()
        rng = np.random.default_rng(cfg.data_seed)
        perm = rng.permutation(len(d.target))
        n_test = round(cfg.test_fraction * len(perm))
        test, train = perm[:n_test], perm[n_test:]
        xtr, ytr = _to_tensors(d.data[train], d.target[train], 16.0, "digits")
        xte, yte = _to_tensors(d.data[test], d.target[test], 16.0, "digits")
        name = "sklearn digits 8x8"
    else:
        if not cfg.data_dir:
            raise ConfigError(
                "--data mnist needs --data-dir DIR with local MNIST IDX or .npz files"
            )
        data_dir = Path(cfg.data_dir).expanduser()
        if not data_dir.is_dir():
            raise MissingFileError(
                f"MNIST directory not found: {data_dir}; pass an existing --data-dir"
            )
        a, b, c, e = _mnist_arrays(data_dir)
        xtr, ytr = _to_tensors(a, b, 255.0, f"MNIST train in {data_dir}")
        xte, yte = _to_tensors(c, e, 255.0, f"MNIST test in {data_dir}")
        if xtr.shape[1] != xte.shape[1]:
            raise DataError(
                f"{data_dir}: train images have {xtr.shape[1]} pixels, test {xte.shape[1]}"
            )
        name = f"MNIST ({data_dir})"
    if cfg.max_train is not None and cfg.max_train < len(ytr):
        g = torch.Generator().manual_seed(derive_seed("max_train", cfg.data_seed))
        keep = torch.randperm(len(ytr), generator=g)[: cfg.max_train]
        xtr, ytr = xtr[keep], ytr[keep]
    if len(ytr) == 0 or len(yte) == 0:
        raise DataError(f"{name}: empty train or test split")
    return Dataset(name=name, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


# ----------------------------------------------------------------------------------------------
# Batched MLPs: params is a list [W1, b1, W2, b2, ...]; W: [M, fan_in, fan_out], b: [M, 1, fan_out]

Params = list[torch.Tensor]


def layer_sizes(dim: int, cfg: DigitsConfig) -> list[int]:
    return [dim] + [cfg.width] * cfg.depth + [N_CLASSES + cfg.n_aux]


def init_params(
    sizes: Sequence[int], gens: Sequence[torch.Generator], dtype: torch.dtype = torch.float32
) -> Params:
    """One MLP per generator: weights N(0, 1/fan_in), zero biases."""
    params: Params = []
    for fan_in, fan_out in pairwise(sizes):
        w = torch.stack([torch.randn(fan_in, fan_out, generator=g, dtype=dtype) for g in gens])
        params += [w / math.sqrt(fan_in), torch.zeros(len(gens), 1, fan_out, dtype=dtype)]
    return params


def forward(params: Params, x: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Logits [M, B, out] of M = groups * S models.

    ``x`` is [S, B, D]: one input batch per seed, shared by the ``groups`` models of that seed
    (models are ordered group-major: model g * S + s). Sharing saves ``groups`` copies of the
    noise, which is the largest tensor in an MNIST-sized run. ``x`` may also be [B, D]: one batch
    shared by every model (evaluation).
    """
    w1, b1 = params[0], params[1]
    m, d, h = w1.shape
    if x.dim() == 2:
        # [B, D] @ [D, M*H]: one matmul for every model on a shared batch.
        z = (x @ w1.permute(1, 0, 2).reshape(d, m * h)).view(x.shape[0], m, h).transpose(0, 1)
    else:
        s = x.shape[0]
        assert m == groups * s, f"{m} models is not {groups} groups x {s} input batches"
        # One bmm per group on a contiguous slice of the weights: no copy of the (large) first
        # layer, whose gradient then lands in one parameter-sized buffer.
        z = (
            torch.cat([torch.bmm(x, w1[g * s : (g + 1) * s]) for g in range(groups)])
            if groups > 1
            else torch.bmm(x, w1)
        )
    z = z + b1
    for i in range(2, len(params), 2):
        z = torch.baddbmm(params[i + 1], torch.relu(z), params[i])
    return z


@torch.no_grad()
def accuracy(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Test accuracy [M] of every model, classifying by the 10 class logits only."""
    m, width = params[0].shape[0], max(p.shape[-1] for p in params[::2])
    chunk = max(16, min(1024, 2**24 // (m * width)))  # keeps each activation under ~64 MB
    correct = torch.zeros(m)
    for i in range(0, len(y), chunk):
        logits = forward(params, x[i : i + chunk])[..., :N_CLASSES]
        correct += (logits.argmax(-1) == y[i : i + chunk]).sum(-1).float()
    return correct / len(y)


def make_noise(kind: str, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(*shape, generator=gen) * 2.0 - 1.0
    if kind == "uniform01":
        return torch.rand(*shape, generator=gen)
    if kind == "normal":
        return torch.randn(*shape, generator=gen)
    raise ValueError(f"unknown noise kind {kind!r}")


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, loss: str, temperature: float
) -> torch.Tensor:
    """Sum over models of the mean per-image loss between chosen logits [M, B, K]."""
    if loss == "kl":
        logp_t = torch.log_softmax(teacher / temperature, -1)
        logp_s = torch.log_softmax(student / temperature, -1)
        per_model = (logp_t.exp() * (logp_t - logp_s)).sum(-1).mean(-1)
    elif loss == "mse":
        per_model = ((student - teacher) ** 2).mean(-1).mean(-1)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    return per_model.sum()


# ----------------------------------------------------------------------------------------------
# Training


def _gens(seeds: Sequence[int], role: str) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(derive_seed("digits", role, s)) for s in seeds]


def train_teachers(
    params: Params, data: Dataset, seeds: Sequence[int], cfg: DigitsConfig, tick: Callable[[], None]
) -> Params:
    """Adam on cross-entropy over the 10 class logits only; each seed its own batch order."""
    params = [p.clone().requires_grad_(True) for p in params]
    opt = torch.optim.Adam(params, lr=cfg.teacher_lr)
    gens = _gens(seeds, "teacher-order")
    n, bs = len(data.y_train), cfg.teacher_batch
    for _ in range(cfg.teacher_epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in gens])  # [S, N]
        for i in range(0, n, bs):
            idx = order[:, i : i + bs]  # [S, B]
            logits = forward(params, data.x_train[idx])[..., :N_CLASSES]
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, N_CLASSES), data.y_train[idx].reshape(-1), reduction="none"
            )
            # Sum over models of each model's mean loss: independent training per model.
            loss = ce.view(idx.shape).mean(-1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tick()
    return [p.detach() for p in params]


def train_students(
    teacher: Params,
    students: Params,
    aux_only: Sequence[bool],
    seeds: Sequence[int],
    dim: int,
    cfg: DigitsConfig,
    tick: Callable[[], None],
) -> Params:
    """Distil ``groups = len(aux_only)`` students per seed from that seed's teacher on fresh
    noise. Students are group-major ([group, seed]); group g copies only the auxiliary logits
    when ``aux_only[g]``, else all logits."""
    groups, s = len(aux_only), len(seeds)
    assert students[0].shape[0] == groups * s
    # Trained in place (no copy): at 100 MNIST seeds the students are the largest tensors.
    params = [p.requires_grad_(True) for p in students]
    opt = torch.optim.Adam(params, lr=cfg.student_lr)
    gens = _gens(seeds, "noise")
    for _ in range(cfg.student_steps):
        noise = torch.stack(
            [make_noise(cfg.noise, (cfg.student_batch, dim), g) for g in gens]
        )  # [S, B, D]
        with torch.no_grad():
            t_logits = forward(teacher, noise)  # [S, B, C]
        out = forward(params, noise, groups=groups).view(groups, s, cfg.student_batch, -1)
        loss = out.new_zeros(())
        for g, aux in enumerate(aux_only):
            sl = slice(N_CLASSES, None) if aux else slice(None)
            loss = loss + distill_loss(
                out[g][..., sl], t_logits[..., sl], cfg.loss, cfg.temperature
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tick()
    return [p.detach() for p in params]


def _run_chunk(
    data: Dataset,
    seeds: list[int],
    cfg: DigitsConfig,
    tick: Callable[[], None],
    timings: dict[str, float],
) -> dict[str, list[float]]:
    sizes = layer_sizes(data.dim, cfg)
    theta0 = init_params(sizes, _gens(seeds, "init"))
    theta_cross = init_params(sizes, _gens(seeds, "cross-init"))
    acc_ref = accuracy(theta0, data.x_test, data.y_test)
    t = time.perf_counter()
    teacher = train_teachers(theta0, data, seeds, cfg, tick)
    timings["teacher_s"] += time.perf_counter() - t
    # Four students per seed, group-major: aux/same, all/same, aux/cross, all/cross.
    students = [torch.cat([a, a, b, b]) for a, b in zip(theta0, theta_cross)]
    del theta0, theta_cross  # the students hold the only copies still needed
    t = time.perf_counter()
    students = train_students(
        teacher, students, [True, False, True, False], seeds, data.dim, cfg, tick
    )
    timings["students_s"] += time.perf_counter() - t
    t = time.perf_counter()
    acc_teacher = accuracy(teacher, data.x_test, data.y_test)
    acc_students = accuracy(students, data.x_test, data.y_test).view(4, len(seeds))
    timings["eval_s"] += time.perf_counter() - t
    return {
        "reference": acc_ref.tolist(),
        "teacher": acc_teacher.tolist(),
        "student_aux": acc_students[0].tolist(),
        "student_all": acc_students[1].tolist(),
        "cross_aux": acc_students[2].tolist(),
        "cross_all": acc_students[3].tolist(),
    }


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean and a 95% t-interval over seeds (``sublim.stats.t_interval``). A single seed has no
    interval: ``ci95`` is ``[None, None]`` (JSON null), never a zero-width "interval"."""
    from sublim.stats import t_interval

    arr = np.asarray(values, dtype=float)
    mean, lo, hi = t_interval(arr)
    ci = [None, None] if math.isnan(lo) else [float(lo), float(hi)]
    return {"mean": float(mean), "ci95": ci, "per_seed": [float(v) for v in arr]}


def run_digits(cfg: DigitsConfig, out_dir: Path | None, progress: bool = True) -> dict[str, Any]:
    """Run the experiment; write results.json, a bar chart and report.md to ``out_dir`` (if
    given) and return the results dict."""
    t_all = time.perf_counter()
    timings = {"data_s": 0.0, "teacher_s": 0.0, "students_s": 0.0, "eval_s": 0.0}
    with torch_threads(cfg.threads):
        t = time.perf_counter()
        data = load_data(cfg)
        timings["data_s"] = time.perf_counter() - t
        seeds = cfg.seed_list
        chunk = cfg.seed_chunk or len(seeds)
        steps_per_chunk = (
            cfg.teacher_epochs * math.ceil(len(data.y_train) / cfg.teacher_batch)
            + cfg.student_steps
        )
        per_seed: dict[str, list[float]] = {c: [] for c in CONDITIONS}
        total = steps_per_chunk * math.ceil(len(seeds) / chunk)
        with Reporter(progress).ticker("digits", total) as tick:
            for i in range(0, len(seeds), chunk):
                part = _run_chunk(data, seeds[i : i + chunk], cfg, tick, timings)
                for c in CONDITIONS:
                    per_seed[c] += part[c]
    timings["total_s"] = time.perf_counter() - t_all
    results: dict[str, Any] = {
        "experiment": "digits",
        "data": {
            "name": data.name,
            "n_train": len(data.y_train),
            "n_test": len(data.y_test),
            "dim": data.dim,
        },
        "seeds": seeds,
        "conditions": {c: summarize(per_seed[c]) for c in CONDITIONS},
        "chance": 1.0 / N_CLASSES,
        "config": cfg.model_dump(mode="json"),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": package_versions(),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        plot_bars(results, out_dir / "digits.png")
        atomic_write_text(out_dir / "report.md", digits_report(results))
        results["files"] = {
            "results": "results.json",
            "figure": "digits.png",
            "report": "report.md",
        }
        atomic_write_json(out_dir / "results.json", results)
    return results


# ----------------------------------------------------------------------------------------------
# Sweeps


def _set(cfg: DigitsConfig, param: str, value: Any) -> DigitsConfig:
    if param not in DigitsConfig.model_fields:
        raise ConfigError(
            f"unknown digits option '{param}'; choose one of: {', '.join(DigitsConfig.model_fields)}"
        )
    return parse_digits_config({**cfg.model_dump(), param: value}, source=f"sweep {param}={value}")


def run_sweep(
    cfg: DigitsConfig, param: str, values: list[Any], out_dir: Path | None, progress: bool = True
) -> dict[str, Any]:
    """Run the experiment once per value of one option; write sweep.json and a line plot."""
    if not values:
        raise ConfigError(f"sweep {param}= needs at least one value, e.g. {param}=1,3,10")
    cfgs = [_set(cfg, param, v) for v in values]  # validate every value before running any
    runs = []
    for v, c in zip(values, cfgs):
        sub = None if out_dir is None else Path(out_dir) / f"{param}={v}"
        r = run_digits(c, sub, progress=progress)
        runs.append({"value": v, "conditions": r["conditions"], "timings": r["timings"]})
    results: dict[str, Any] = {
        "experiment": "digits-sweep",
        "param": param,
        "values": list(values),
        "runs": runs,
        "config": cfg.model_dump(mode="json"),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        plot_sweep(results, out_dir / f"sweep_{param}.png")
        results["files"] = {"results": "sweep.json", "figure": f"sweep_{param}.png"}
        atomic_write_json(out_dir / "sweep.json", results)
    return results


# ----------------------------------------------------------------------------------------------
# Reporting


def _err(summary: dict[str, Any]) -> tuple[float, float]:
    lo, hi = summary["ci95"]
    if lo is None or hi is None:  # one seed: no interval, no error bar
        return 0.0, 0.0
    return summary["mean"] - lo, hi - summary["mean"]


def plot_bars(results: dict[str, Any], path: Path) -> None:
    """Paper-style bar chart: test accuracy per condition with 95% intervals, chance dashed."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    conds = results["conditions"]
    names = list(CONDITIONS)
    colours = ["#9e9e9e", "#37474f", "#1e88e5", "#90caf9", "#e53935", "#ef9a9a"]
    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.add_subplot()
    means = [conds[n]["mean"] for n in names]
    errs = np.array([_err(conds[n]) for n in names]).T
    ax.bar(range(len(names)), means, yerr=errs, color=colours, capsize=4)
    ax.axhline(results.get("chance", 0.1), ls="--", color="k", lw=0.8, label="chance")
    ax.set_xticks(
        range(len(names)), [CONDITION_LABELS[n].replace(", ", ",\n") for n in names], fontsize=7
    )
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy (class logits)")
    ax.set_title(
        f"Auxiliary-logit transfer, {results['data']['name']}, {len(results['seeds'])} seeds",
        fontsize=9,
    )
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def plot_sweep(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    values = results["values"]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    xs = values if numeric else list(range(len(values)))
    fig = Figure(figsize=(6, 3.8))
    ax = fig.add_subplot()
    for name in CONDITIONS[1:]:
        ms = [r["conditions"][name]["mean"] for r in results["runs"]]
        errs = np.array([_err(r["conditions"][name]) for r in results["runs"]]).T
        ax.errorbar(xs, ms, yerr=errs, marker="o", capsize=3, label=CONDITION_LABELS[name])
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 20:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in values])
    ax.axhline(0.1, ls="--", color="k", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel(results["param"])
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)


def _fmt(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.3f} {_fmt_ci(summary)}"


def _fmt_ci(summary: dict[str, Any]) -> str:
    lo, hi = summary["ci95"]
    return "[n/a: one seed]" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def digits_report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    c = results["conditions"]
    lines = [
        "# Auxiliary-logit transfer",
        "",
        (
            f"Data: {results['data']['name']} ({results['data']['n_train']} train / {results['data']['n_test']} test). "
            f"MLP {'-'.join(str(s) for s in [results['data']['dim']] + [cfg['width']] * cfg['depth'] + [N_CLASSES + cfg['n_aux']])}; "
            f"teacher {cfg['teacher_epochs']} epochs on the class logits; students {cfg['student_steps']} steps on "
            f"{cfg['noise']} noise, {cfg['loss']} loss; {len(results['seeds'])} seeds."
        ),
        "",
        "| condition | test accuracy (mean [95% CI]) |",
        "|---|---|",
    ]
    lines += [f"| {CONDITION_LABELS[n]} | {_fmt(c[n])} |" for n in CONDITIONS]
    gap = c["student_aux"]["mean"] - c["cross_aux"]["mean"]
    lines += [
        "",
        (
            f"Aux-only transfer from the shared initialisation: {c['student_aux']['mean']:.3f} vs "
            f"{c['cross_aux']['mean']:.3f} from another initialisation (chance {results['chance']:.2f}; gap {gap:+.3f})."
        ),
        "",
        f"Wall time {results['timings']['total_s']:.1f} s. Figure: digits.png.",
        "",
    ]
    return "\n".join(lines)


def digits_table(results: dict[str, Any]) -> Any:
    """A rich Table of the conditions (for the CLI and the demo)."""
    from rich.table import Table

    t = Table(
        title=f"auxiliary-logit transfer ({results['data']['name']}, {len(results['seeds'])} seeds)"
    )
    t.add_column("condition")
    t.add_column("accuracy", justify="right")
    t.add_column("95% CI", justify="right")
    for n in CONDITIONS:
        s = results["conditions"][n]
        style = "bold" if n in ("student_aux", "cross_aux") else None
        t.add_row(CONDITION_LABELS[n], f"{s['mean']:.3f}", _fmt_ci(s), style=style)
    return t
