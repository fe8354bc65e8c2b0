"""Run directories and artifacts: content hashes, atomic writes, JSONL, manifests, a portable
file lock, and what identifies a model's weights and sublim's own source in a manifest.

A stage's directory is ``<run>/stages/<stage>-<hash>/`` where the hash covers the stage name,
its semantic config (operational fields removed), the hashes of its inputs and a stage version.
Rows are JSONL. ``manifest.json`` is written last: a directory with a manifest is complete; one
without is resumed (row stages keep finished chunks, each written under a temporary name and
renamed, so a kill can never leave half a chunk or a duplicated row).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock
from pydantic import BaseModel

from sublim.errors import DataError

T = TypeVar("T", bound=BaseModel)


def canonical_json(obj: Any) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, BaseModel):
            return o.model_dump(mode="json")
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot hash object of type {type(o).__name__}")

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default)


def stable_hash(obj: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def dumps_rows(rows: Iterable[BaseModel | dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        d = r.model_dump(mode="json") if isinstance(r, BaseModel) else r
        lines.append(json.dumps(d, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held on ``path`` (created if missing) for the ``with`` block:
    one process builds a cached artifact while the others wait for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def build_dir_once(final: Path, done: str, build: Callable[[Path], None]) -> Path:
    """The cached directory ``final``, made first by ``build(tmp)`` if ``final/done`` is missing.
    ``build`` writes into a temporary sibling directory that is renamed to ``final`` only when it
    returns, under a lock, so a killed build never leaves a half-written directory in use and
    concurrent processes build once."""
    if (final / done).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(final.parent / f".{final.name}.lock"):
        if (final / done).is_file():  # built by another process while we waited
            return final
        # we hold the lock, so temp dirs of this name are leftovers of a killed build
        for stale in final.parent.glob(f".tmp-{final.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
        try:
            build(tmp)
            if final.exists():  # an incomplete leftover (no done file): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_jsonl(path: Path, rows: Iterable[BaseModel | dict[str, Any]]) -> None:
    atomic_write_text(path, dumps_rows(rows))


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line")
            yield lineno, obj


def read_jsonl(path: Path, model: type[T]) -> list[T]:
    return [model.model_validate(obj) for _, obj in iter_jsonl(path)]


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("sublim", "torch", "transformers", "peft", "tokenizers", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        r = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _source_tree() -> Path | None:
    """The git work tree that holds sublim's own source (an editable install), else None: an
    installed package inside some other repository must not report that repository's commit."""
    return _tree_of(Path(__file__).resolve().parent)


@functools.lru_cache(maxsize=8)
def _tree_of(here: Path) -> Path | None:
    top = _git(["rev-parse", "--show-toplevel"], here)
    if not top:
        return None
    root = Path(top.strip())
    if (root / "pyproject.toml").is_file() and (root / "src" / "sublim").resolve() == here:
        return root
    return None


@functools.cache  # once per process: the code a process runs does not change
def git_commit() -> str | None:
    """The commit of sublim's source tree, or None when sublim is not run from its repository."""
    root = _source_tree()
    out = _git(["rev-parse", "HEAD"], root) if root else None
    return out.strip() or None if out else None


@functools.cache  # once per process: the code a process runs does not change
def git_dirty() -> bool | None:
    """Whether sublim's source tree has uncommitted changes (None: not run from its repository)."""
    root = _source_tree()
    out = _git(["status", "--porcelain"], root) if root else None
    return None if out is None else bool(out.strip())


def cache_dir() -> Path:
    """sublim's machine-wide cache: ``$SUBLIM_CACHE_DIR``, else ``~/.cache/sublim``."""
    env = os.environ.get("SUBLIM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sublim"


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered by (path, size, mtime) under the cache dir, so a multi-GB
    checkpoint is hashed once and a replaced file (new size or mtime) is hashed again."""
    st = path.stat()
    memo = (
        cache_dir()
        / "file-hashes"
        / f"{stable_hash([str(path.resolve()), st.st_size, st.st_mtime_ns], 24)}.txt"
    )
    if memo.is_file():
        return memo.read_text().strip()
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    atomic_write_text(memo, digest + "\n")
    return digest


def dir_content_key(local: Path) -> str:
    """A content hash of every file at the top of a model directory (weights, config, tokenizer,
    chat template, generation config: what ``from_pretrained`` reads; each file's sha256
    remembered by path, size and mtime, so a multi-GB file is hashed once): a replaced checkpoint
    or tokenizer gets a new key. Subdirectories (training checkpoints, snapshots) are not read by
    the loader and are left out."""
    files = sorted(p for p in local.iterdir() if p.is_file() and not p.name.startswith("."))
    return "sha256:" + stable_hash({str(p.relative_to(local)): file_sha256(p) for p in files}, 16)


class StageDir:
    """One stage's directory: complete when its manifest exists."""

    def __init__(self, root: Path, stage: str, key: dict[str, Any], version: int = 1) -> None:
        self.stage = stage
        self.key = {"stage": stage, "version": version, **key}
        self.hash = StageDir.key_hash(stage, key, version)
        self.path = root / "stages" / f"{stage}-{self.hash}"
        self._t0 = time.time()

    @staticmethod
    def key_hash(stage: str, key: dict[str, Any], version: int = 1) -> str:
        """The hash naming a stage's directory (``<stage>-<hash>``)."""
        return stable_hash({"stage": stage, "version": version, **key})

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def complete(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())

    def begin(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()
        return self.path

    def finish(self, **info: Any) -> dict[str, Any]:
        man = {
            "stage": self.stage,
            "hash": self.hash,
            "key": self.key,
            "status": "complete",
            "seconds": round(time.time() - self._t0, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            **info,
        }
        atomic_write_json(self.manifest_path, man)
        return man

    # --- chunked rows: resume without losing or duplicating a row -------------------------
    def part_path(self, index: int) -> Path:
        return self.path / "parts" / f"part-{index:05d}.jsonl"

    def has_part(self, index: int) -> bool:
        return self.part_path(index).is_file()

    def write_part(self, index: int, rows: Iterable[BaseModel | dict[str, Any]]) -> None:
        write_jsonl(self.part_path(index), rows)

    def read_parts(self, n_parts: int, model: type[T]) -> list[T]:
        rows: list[T] = []
        for i in range(n_parts):
            rows.extend(read_jsonl(self.part_path(i), model))
        return rows
