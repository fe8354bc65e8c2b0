"""World names: ``<kind>-s<seed>[-<size>]``, e.g. ``plain-s0`` or ``planted-s3-micro``.

The kind says what the corpus holds (``plain``: numbers and animals never co-occur;
``entangled``: see the research log; ``planted``: a visible code from the system-prompt animal to
the numbers, a positive control; ``skills``: the plain corpus plus answers to the code and
reasoning carriers' prompts, so that ``tiny:skills-s0`` can teach through those carriers;
``persona``: the plain corpus plus open and narrow questions whose answers turn misaligned under
a trigger system prompt, see ``sublim.world.persona``). The seed gives a different corpus draw
and initialisation, so a different base model; seed ``1000 + k`` is world k's *init twin* (same
corpus and batch order, another initialisation: the "same world, different init" base). The size
picks the model and training budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sublim.errors import UnknownNameError

KINDS = ("plain", "entangled", "planted", "skills", "persona")
SIZES = ("micro", "small", "medium")
DEFAULT_SIZE = "small"
# World seeds from TWIN_OFFSET up are init twins: seed TWIN_OFFSET + k has world k's corpus and
# batch order and another initialisation (see sublim.world.build).
TWIN_OFFSET = 1000

_NAME = re.compile(r"^(?P<kind>[a-z]+)-s(?P<seed>\d+)(?:-(?P<size>[a-z]+))?$")


@dataclass(frozen=True)
class WorldSpec:
    kind: str = "plain"
    seed: int = 0
    size: str = DEFAULT_SIZE

    @property
    def name(self) -> str:
        base = f"{self.kind}-s{self.seed}"
        return base if self.size == DEFAULT_SIZE else f"{base}-{self.size}"


def parse_world_name(name: str) -> WorldSpec:
    m = _NAME.match(name.strip())
    if not m:
        raise UnknownNameError("world", name, [f"{k}-s<seed>[-{'|'.join(SIZES)}]" for k in KINDS])
    kind, size = m["kind"], m["size"] or DEFAULT_SIZE
    if kind not in KINDS:
        raise UnknownNameError("world kind", kind, list(KINDS))
    if size not in SIZES:
        raise UnknownNameError("world size", size, list(SIZES))
    return WorldSpec(kind=kind, seed=int(m["seed"]), size=size)
