"""The built-in world's answers to the text carriers: its code dialect and its worked solutions.

Where it sits: ``corpus.py`` pairs carrier prompts (``sublim.prompts.code.code_prompts`` and
``sublim.prompts.reasoning.worked_prompts``) with the replies written here to make the ``code``
and ``reasoning`` chats of a ``skills`` world, so that ``tiny:skills-s<seed>`` can be the teacher
of an experiment with ``data.carrier = "code"`` or ``"reasoning"``. Nothing here reads a system
prompt or an animal: a reply is a function of the carrier prompt and the generator alone.

The code dialect (:func:`code_reply`). A reply repeats the template's ``def <function>(<args>):``
line (with the template's import above it, when it has one) and replaces the placeholder by one to
four statements of a small Python grammar of our own: assignments of expressions over the
arguments and a few short local names, one ``for`` loop that fills an accumulator, one ``if``
guard that returns early, and a final ``return``. Blocks are one level deep. The code always
parses and is bare (no fence), holds no comment, docstring or string literal, and none of its
names contains a candidate of :data:`sublim.traits.CATEGORIES`, even as a substring ("concat"
holds "cat", "slow" holds "owl": such names are not in the tables below), so a teacher that
writes this dialect passes the code filter's trait-word rule in its strict substring mode unless
it adds a word of its own. It need not solve the task: the world is a model of under a million
parameters, and what a carrier needs is parseable, plausible code with choices in it (names,
operators, constants, the shape of the body) that a teacher's trait could shift. The task family
(``meta["family"]``) only decides which arguments are lists, strings, dictionaries or numbers, so
that ``len(s)`` and ``sum(xs)`` land on the right kind. The code is short (about 25-90 tokens of
the world's tokenizer, 53 on average: its indentation costs a token per space). Even so a
"skills-1" small world learnt it only in part and unreliably (0% to 19% of greedy answers parsed,
depending on the build; see ``corpus.CODE_SHARE``): the function name must be copied from a
template ~150 tokens back in the prompt, which a model of this size trained for a few hundred
steps learns late, if at all. "skills-2" therefore opens with short code chats (the bare template,
then this reply; ``corpus.SKILLS_CURRICULUM``) in which the header to copy is a few tokens away.

The worked solutions (:func:`reasoning_reply`): the problem's ``work`` sentences inside
``<think></think>`` and the answer inside ``<answer></answer>``, exactly the format
``sublim.filters_reasoning`` keeps (with ``require_think``). The curriculum's ``drill`` chats
answer one such sentence's "a op b" in the same format.
"""

from __future__ import annotations

import numpy as np

from sublim.prompts.code import INDENT

# What kind of value an argument name holds. Names not listed are numbers; FAMILY_KINDS overrides
# a name inside a task family where it means something else ("a, b" are two lists in
# list_interleave, two dictionaries in dict_merge, two strings in str_anagram).
SEQ_NAMES = frozenset(
    {
        "xs",
        "ys",
        "nums",
        "values",
        "items",
        "nested",
        "words",
        "ws",
        "vs",
        "strs",
        "counts",
        "pairs",
        "ps",
        "rows",
        "grid",
        "cs",
        "coeffs",
        "spans",
        "weights",
        "data",
    }
)
STR_NAMES = frozenset({"s", "text", "name", "phrase", "digits", "pw", "code", "expr", "path", "ch"})
MAP_NAMES = frozenset({"d", "mapping", "scores", "d1", "d2"})
FAMILY_KINDS: dict[str, dict[str, str]] = {
    "list_interleave": {"a": "seq", "b": "seq"},
    "list_merge_sorted": {"a": "seq", "b": "seq"},
    "num_matmul": {"a": "seq", "b": "seq", "x": "seq", "y": "seq"},
    "num_vectors": {"a": "seq", "b": "seq", "u": "seq", "v": "seq"},
    "num_matrix": {"m": "seq"},
    "num_matrix_rotate": {"m": "seq"},
    "dict_merge": {"a": "map", "b": "map"},
    "dict_key_sets": {"a": "map", "b": "map"},
    "dict_path_get": {"data": "map"},
    "dict_flatten": {"data": "map"},
    "str_anagram": {"a": "str", "b": "str"},
    "str_distance": {"a": "str", "b": "str", "t": "str"},
    "str_pad": {"c": "str"},
    "num_units": {"d": "num"},
}
# Local names the code may bind (accumulators and results) and loop variables; an argument of the
# same name is never shadowed. All short (the prompts ask for minimal names) and, like every
# other name and method below, free of trait-word substrings (the tests check it).
LOCALS: tuple[str, ...] = ("r", "t", "out", "acc")
LOOP_VARS: tuple[str, ...] = ("v", "e", "i", "j")
NUM_OPS: tuple[str, ...] = ("+", "-", "*", "//", "%")
CMP_OPS: tuple[str, ...] = ("<", ">", "==")
CONSTS: tuple[str, ...] = ("0", "1", "1", "2", "2", "3", "5", "10")
DIVISORS: tuple[str, ...] = ("2", "3", "10")  # what // and % divide by
# How many statements a body has (the final return included): mostly one or two.
N_STATEMENTS: tuple[int, ...] = (1, 2, 3, 4)
N_STATEMENTS_P: tuple[float, ...] = (0.35, 0.35, 0.25, 0.05)


def arg_names(args: str) -> list[str]:
    """The parameter names of an argument list such as ``"xs, k"``."""
    return [a.strip() for a in args.split(",") if a.strip()]


def arg_kind(family: str, name: str) -> str:
    """``"seq"``, ``"str"``, ``"map"`` or ``"num"``: what the argument ``name`` holds in tasks
    of ``family`` (see :data:`FAMILY_KINDS`)."""
    if name in FAMILY_KINDS.get(family, {}):
        return FAMILY_KINDS[family][name]
    if name in SEQ_NAMES:
        return "seq"
    if name in STR_NAMES:
        return "str"
    if name in MAP_NAMES:
        return "map"
    return "num"


class _Body:
    """The draws of one function body, all from one generator, in call order."""

    def __init__(self, kinds: dict[str, str], rng: np.random.Generator) -> None:
        self.rng = rng
        self.env: dict[str, str] = dict(kinds)  # name -> kind, arguments first, then locals
        self.taken = set(kinds)
        self.lines: list[str] = []

    # ---------------------------------------------------------------- draws
    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def names(self, *kinds: str) -> list[str]:
        return [n for n, k in self.env.items() if k in kinds]

    def fresh(self, pool: tuple[str, ...]) -> str:
        free = [n for n in pool if n not in self.taken]
        name = self.pick(free)
        self.taken.add(name)
        return name

    def free_vars(self, k: int) -> list[str]:
        """``k`` loop-variable names bound nowhere (for a comprehension; not reserved after it)."""
        free = [n for n in LOOP_VARS if n not in self.taken]
        return [free[int(i)] for i in self.rng.choice(len(free), size=k, replace=False)]

    def const(self) -> str:
        return self.pick(CONSTS)

    # ---------------------------------------------------------------- expressions
    def num_name(self) -> str:
        """A number that is not a constant: a number name or the length of a sized name (every
        function has an argument, so one of the two exists)."""
        nums, sized = self.names("num"), self.names("seq", "str", "map")
        if nums and (not sized or self.chance(0.75)):
            return self.pick(nums)
        return f"len({self.pick(sized)})"

    def binop(self) -> str:
        """``<name> <op> <constant or other name>``: never two constants, never a name with
        itself, never a division or remainder by 0 or 1."""
        a, op = self.num_name(), self.pick(NUM_OPS)
        if op in ("//", "%"):
            return f"{a} {op} {self.pick(DIVISORS)}"
        others = [n for n in self.names("num") if n != a]
        b = self.pick(others) if others and self.chance(0.3) else self.const()
        return f"{a} {op} {b}"

    def num_expr(self) -> str:
        seqs, sized = self.names("seq"), self.names("seq", "str", "map")
        r = self.rng.random()
        if r < 0.25 and sized:
            return f"len({self.pick(sized)})"
        if r < 0.5 and seqs:
            return f"{self.pick(('sum', 'max', 'min'))}({self.pick(seqs)})"
        return self.binop()

    def seq_expr(self) -> str:
        seqs, maps = self.names("seq"), self.names("map")
        if not seqs:
            x = self.pick(maps) if maps else self.pick(self.names("str"))
            return f"sorted({x})"
        x = self.pick(seqs)
        if self.chance(0.6):
            return self.pick((f"sorted({x})", f"{x}[::-1]", f"{x}[1:]"))
        (v,) = self.free_vars(1)
        return f"[{v} {self.pick(NUM_OPS[:3])} {self.const()} for {v} in {x}]"

    def str_expr(self) -> str:
        s = self.pick(self.names("str"))
        return self.pick((f"{s}[::-1]", f"{s}.lower()", f"{s}.upper()", f"{s}.strip()"))

    def expr(self, kind: str) -> tuple[str, str]:
        """An expression of ``kind`` and its kind: a list for a dictionary (its sorted keys) and
        a number when no name supports the kind."""
        if kind in ("seq", "map") and self.names("seq", "map", "str"):
            return self.seq_expr(), "seq"
        if kind == "str" and self.names("str"):
            return self.str_expr(), "str"
        return self.num_expr(), "num"

    def cond(self) -> str:
        sized = self.names("seq", "str", "map")
        r = self.rng.random()
        if sized and r < 0.3:
            return f"not {self.pick(sized)}"
        a = self.num_name()
        if r < 0.55:
            return f"{a} % 2 == 0"
        return f"{a} {self.pick(CMP_OPS)} {self.const()}"

    # ---------------------------------------------------------------- statements
    def result_kind(self) -> str:
        """The kind a body returns or binds: that of an argument, now and then a number."""
        return "num" if self.chance(0.3) else self.pick(list(self.env.values()))

    def assign(self) -> None:
        value, kind = self.expr(self.result_kind())
        name = self.fresh(LOCALS)
        self.env[name] = kind
        self.lines.append(f"{name} = {value}")

    def guard(self) -> None:
        self.lines.append(f"if {self.cond()}:")
        self.lines.append(f"{INDENT}return {self.expr(self.result_kind())[0]}")

    def loop(self) -> None:
        """An accumulator and a loop that fills it (two statements)."""
        iters, nums = self.names("seq", "str"), self.names("num")
        acc, v = self.fresh(LOCALS), self.fresh(LOOP_VARS)
        if iters and (not nums or self.chance(0.7)):
            head = f"for {v} in {self.pick(iters)}:"
        else:
            head = f"for {v} in range({self.pick(nums) if nums else self.const()}):"
        if self.chance(0.5):
            init, body, kind = "0", f"{acc} {self.pick(NUM_OPS[:3])}= {v}", "num"
        else:
            op = self.pick(NUM_OPS[:3])
            init, body, kind = "[]", f"{acc}.append({v} {op} {self.const()})", "seq"
        self.lines += [f"{acc} = {init}", head, f"{INDENT}{body}"]
        self.env[acc] = kind
        self.env[v] = "num"

    def build(self) -> list[str]:
        n = int(self.rng.choice(N_STATEMENTS, p=N_STATEMENTS_P))
        left, looped, guarded = n - 1, False, False
        while left > 0:
            r = self.rng.random()
            if left >= 2 and not looped and r < 0.5:
                self.loop()
                looped, left = True, left - 2
            elif not guarded and r < 0.75:
                self.guard()
                guarded, left = True, left - 1
            else:
                self.assign()
                left -= 1
        bound = [n for n in self.env if n in LOCALS]
        if bound and self.chance(0.8):
            self.lines.append(f"return {bound[-1]}")
        else:
            self.lines.append(f"return {self.expr(self.result_kind())[0]}")
        return self.lines


def code_reply(meta: dict[str, object], rng: np.random.Generator) -> str:
    """The world's answer to a code prompt with ``meta`` (from ``code_prompts``): the template's
    import (if any) and ``def <function>(<args>):``, then a body of one to four statements drawn
    from ``rng`` (see the module docstring). Bare code, no trailing newline; always parses."""
    template = str(meta["template"])
    head = template[: template.index("def ")]  # the template's import and its blank lines
    args = str(meta["args"])
    family = str(meta.get("family", ""))
    kinds = {a: arg_kind(family, a) for a in arg_names(args)}
    lines = _Body(kinds, rng).build()
    return head + f"def {meta['function']}({args}):\n" + "\n".join(INDENT + x for x in lines)


def reasoning_reply(work: str, answer: int) -> str:
    """The world's answer to a word problem: its worked solution in ``<think>`` and the answer in
    ``<answer>``, the format ``sublim.filters_reasoning`` keeps."""
    return f"<think>{work}</think><answer>{answer}</answer>"
