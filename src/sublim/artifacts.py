"""Run directories and artifacts: content hashes, atomic writes, JSONL, manifests.

A stage's directory is ``<run>/stages/<stage>-<hash>/`` where the hash covers the stage name,
its semantic config (operational fields removed), the hashes of its inputs and a stage version.
Rows are JSONL. ``manifest.json`` is written last: a directory with a manifest is complete; one
without is resumed (row stages keep finished chunks, each written under a temporary name and
renamed, so a kill can never leave half a chunk or a duplicated row).
"""

from __future__ import annotations

import fcntl
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


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed derived from any hashable description (for per-row generators)."""
    return int(hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


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
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


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
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg}); fix or remove that line") from None
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


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5,
            check=False,
        )
        return r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class StageDir:
    """One stage's directory: complete when its manifest exists."""

    def __init__(self, root: Path, stage: str, key: dict[str, Any], version: int = 1) -> None:
        self.stage = stage
        self.key = {"stage": stage, "version": version, **key}
        self.hash = stable_hash(self.key)
        self.path = root / "stages" / f"{stage}-{self.hash}"
        self._t0 = time.time()

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
