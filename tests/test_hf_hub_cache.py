"""A hub id (``hf:org/name``) served offline from a Hugging Face hub cache, end to end.

The cache is laid out as huggingface_hub writes a download: ``models--org--name/blobs/<hash>``
holding the bytes, ``snapshots/<commit>/`` of symlinks into ``blobs``, ``refs/main`` naming the
current commit. An older snapshot that ``refs/main`` does not name sits beside it and must not be
the one served. The models are tiny random Llamas built here, so their outputs identify them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from test_hf_backend import build_tiny_model

from sublim.backends import hf_models
from sublim.records import SampleParams, user_chat
from sublim.registry import get_backend, parse_model

REPO_ID = "sublim-test/tiny-llama"
CURRENT = "3f1e0a9c4b7d2e8f6a5c1b0d9e8f7a6b5c4d3e2f"
OLDER = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"


def _add_snapshot(repo: Path, commit: str, model_dir: Path) -> Path:
    snap = repo / "snapshots" / commit
    for f in sorted(model_dir.rglob("*")):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / f.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


def test_hub_spec_samples_and_scores_from_the_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    current = build_tiny_model(tmp_path / "current", seed=3)
    older = build_tiny_model(tmp_path / "older", seed=4)
    hub = tmp_path / "hub"
    repo = hub / ("models--" + REPO_ID.replace("/", "--"))
    _add_snapshot(repo, OLDER, older)
    snap = _add_snapshot(repo, CURRENT, current)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(CURRENT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    # huggingface_hub reads HF_HUB_CACHE once, at import; a process started with it set sees both
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))

    ref = parse_model(f"hf:{REPO_ID}")
    assert (ref.backend, ref.id) == ("hf", REPO_ID)
    assert Path(hf_models.resolve(ref)) == snap
    backend = get_backend(ref.backend)
    chats = [user_chat("what is your favourite animal ?"), user_chat("add more numbers : 1 , 2")]
    params = SampleParams(temperature=1.0, max_new_tokens=6)
    conts = ["owl", "3 , 4"]
    direct = parse_model(f"hf:{current}")
    got = backend.sample(ref, chats, params, seed=[1, 2])
    assert got == backend.sample(direct, chats, params, seed=[1, 2])
    scores = backend.score(ref, chats, conts)
    assert scores == backend.score(direct, chats, conts)
    # the two snapshots are told apart, so the equalities above say which one was served
    assert scores != backend.score(parse_model(f"hf:{older}"), chats, conts)
