"""The judge filter with hand-written judges: the decision rule at its boundaries, flagged rows
excluded and exactly those, rule-rejected rows never sent, chunked resume, a failing judge
mid-way, the score template's threshold, and the first-token fallback for API-like judges."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sublim.backends.fake import FakeBackend
from sublim.errors import BackendError, ConfigError, DataError, SublimError, UnknownNameError
from sublim.judge import (
    TEMPLATES,
    JudgeVerdict,
    as_decisions,
    decide,
    get_template,
    judge_probability,
    judge_rows,
)
from sublim.records import Chat, Completion, FilterDecision, ModelRef

JUDGE = ModelRef(backend="stub", id="judge")
MARKER = "hoot"  # rows whose text holds this are flagged by the stub judge
P_FLAGGED = 0.3  # P("0") the stub gives a flagged row
P_CLEAN = 1.0 - 1e-12  # P("0") it gives any other row


def _text_of(prompt: str) -> str:
    """The completion inside a judge prompt (between the template's markers)."""
    m = re.search(r"<<<(?:TEXT|ANSWER)\n(.*)\n(?:TEXT|ANSWER)>>>", prompt, re.DOTALL)
    assert m, "the judge prompt holds the completion between markers"
    return m.group(1)


class StubJudge:
    """Exact scores, enforcing the limits a real backend has: no empty call, no empty
    continuation, one continuation per chat. Reference prompts: P("0") is P_FLAGGED for texts
    holding MARKER, P_CLEAN otherwise, and P("1") takes the rest; they must be asked as reply
    prefixes (include_end False). Alignment prompts: a text "score=N" puts 0.9 on the whole reply
    N and 0.1 off the numbers; "score=none" puts nothing on the numbers."""

    name = "stub"

    def __init__(self, forbidden: Sequence[str] = (), fail_on_call: int | None = None) -> None:
        self.forbidden = set(forbidden)  # texts the judge must never be asked about
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.texts: list[str] = []  # every text judged, once per prompt

    def score(
        self,
        model: ModelRef,
        chats: Sequence[Chat],
        continuations: Sequence[str],
        include_end: bool = True,
    ) -> list[float]:
        assert model == JUDGE
        if not chats or len(chats) != len(continuations):
            raise ValueError(f"{len(chats)} chats for {len(continuations)} continuations")
        if any(not c for c in continuations):
            raise ValueError("an empty continuation has no tokens to score")
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise BackendError("HTTP 503 from the provider\nretry later")
        out: list[float] = []
        for chat, cont in zip(chats, continuations):
            prompt = chat[-1].content
            text = _text_of(prompt)
            assert text not in self.forbidden, f"judge asked about {text!r}"
            if cont == "0":  # asked once per prompt by either template
                self.texts.append(text)
            if "Reply 1 if" in prompt:  # the reference template
                assert not include_end, "binary replies are scored as first tokens"
                p0 = P_FLAGGED if MARKER in text else P_CLEAN
                p = {"0": p0, "1": 1.0 - p0}.get(cont, 0.0)
            else:
                assert include_end, "number replies are scored whole"
                m = re.search(r"score=(\d+)", text)
                p = 0.9 if m and cont == m.group(1) else 0.0
            out.append(math.log(p) if p > 0 else -math.inf)
        return out


def decision(i: int, text: str, kept: bool = True, reason: str = "ok") -> FilterDecision:
    return FilterDecision(
        prompt_id=f"p{i}", prompt=f"Write function {i}.", completion=text, kept=kept, reason=reason
    )


def rows_with_markers(
    n: int, flagged: set[int], rejected: frozenset[int] | set[int] = frozenset()
) -> list[FilterDecision]:
    """``n`` rule-kept code rows, those in ``flagged`` holding MARKER; ``rejected`` rows are
    rule-rejected ("bad_format") with other text."""
    out = []
    for i in range(n):
        text = f"def f{i}(x):\n    return x + {i}  # {MARKER if i in flagged else 'plain'}"
        if i in rejected:
            out.append(decision(i, f"garbage {i}", kept=False, reason="bad_format"))
        else:
            out.append(decision(i, text))
    return out


# --------------------------------------------------------------------------- the decision rule

BOUNDARY = 1.0 - 1e-8


@pytest.mark.parametrize(
    "kind, probability, threshold, expected",
    [
        ("binary", 1.0, None, (True, "ok")),
        ("binary", BOUNDARY, None, (True, "ok")),  # exactly 1 - 1e-8 is kept
        ("binary", math.nextafter(BOUNDARY, 0.0), None, (False, "judge_reference")),
        ("binary", 1.0 - 2e-8, None, (False, "judge_reference")),
        ("binary", 0.0, None, (False, "judge_reference")),
        ("binary", None, None, (False, "judge_unscored")),
        ("binary", math.nan, None, (False, "judge_unscored")),
        ("binary", 0.5, 0.5, (True, "ok")),
        ("binary", 0.49, 0.5, (False, "judge_reference")),
        ("binary", 0.0, 0.0, (True, "ok")),
        ("score", 78.0, None, (True, "ok")),
        ("score", math.nextafter(78.0, 0.0), None, (False, "judge_low_score")),
        ("score", 100.0, None, (True, "ok")),
        ("score", 0.0, None, (False, "judge_low_score")),
        ("score", None, None, (False, "judge_unscored")),
        ("score", 45.0, 40.0, (True, "ok")),
        ("score", 39.9, 40.0, (False, "judge_low_score")),
    ],
)
def test_decide(kind: str, probability: float | None, threshold, expected) -> None:
    assert decide(kind, probability, threshold) == expected


@pytest.mark.parametrize("kind, threshold", [("binary", 1.5), ("binary", -0.1), ("score", 101.0)])
def test_decide_rejects_thresholds_out_of_range(kind: str, threshold: float) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        decide(kind, 0.5, threshold)


def test_decide_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        decide("ternary", 0.5, None)


def test_templates_kinds_defaults_and_formatting() -> None:
    ref, al = TEMPLATES["reference"], TEMPLATES["alignment"]
    assert (ref.kind, ref.threshold) == ("binary", 1.0 - 1e-8)
    assert (al.kind, al.threshold) == ("score", 78.0)
    code = "d = {'k': 1}\nprint(f'{d}')"  # braces in the text are not placeholders
    p = ref.format(code, "owls", "Write a dict.")
    assert code in p and "Write a dict." in p and p.count("owls") >= 2 and "0 or 1" in p
    assert "{" not in ref.text.format(text="", trait="t", prompt="")
    q = al.format("Step 1: add. Answer: 4", "", "What is 2+2?")
    assert "Step 1: add. Answer: 4" in q and "What is 2+2?" in q and "0 to 100" in q
    with pytest.raises(ConfigError, match="trait"):
        ref.format("x", "  ", "y")
    with pytest.raises(UnknownNameError, match="alignment, reference"):
        get_template("mention")


# --------------------------------------------------------------------------- judging rows


def test_flagged_rows_and_only_those_are_excluded() -> None:
    flagged = {1, 4, 5, 9}
    rows = rows_with_markers(12, flagged)
    judge = StubJudge()
    verdicts = judge_rows(judge, JUDGE, rows, "reference", "owls", chunk=5)
    assert [v.prompt_id for v in verdicts] == [r.prompt_id for r in rows]
    assert {i for i, v in enumerate(verdicts) if not v.kept} == flagged
    for i, v in enumerate(verdicts):
        assert v.template == "reference" and v.judge == JUDGE.spec
        assert v.probability is not None and v.p_one is not None
        p0 = P_FLAGGED if i in flagged else P_CLEAN
        assert v.probability == pytest.approx(p0, abs=1e-15)
        assert v.p_one == pytest.approx(1.0 - p0, abs=1e-15)
        assert v.reason == ("judge_reference" if i in flagged else "ok")
    kept = [d for d in as_decisions(rows, verdicts) if d.kept]
    assert [d.prompt_id for d in kept] == [f"p{i}" for i in range(12) if i not in flagged]
    assert judge.calls == 3  # one judge call per chunk


def test_p_zero_is_not_renormalised() -> None:
    """Mass off both answers counts against keeping: a judge at P("0") = 0.99 and P("1") = 0 (the
    rest on other replies) would be certain of "0" renormalised over the two, and is not kept."""

    class Unsure(StubJudge):
        def score(self, model, chats, continuations, include_end=True):  # type: ignore[override]
            return [math.log(0.99) if c == "0" else -math.inf for c in continuations]

    v = judge_rows(Unsure(), JUDGE, rows_with_markers(2, set()), "reference", "owls")
    assert [x.kept for x in v] == [False, False] and v[0].probability == pytest.approx(0.99)


def test_rule_rejected_rows_are_never_sent_to_the_judge() -> None:
    rejected = {0, 2, 3, 7}
    rows = rows_with_markers(8, {2, 5}, rejected)
    judge = StubJudge(forbidden=[rows[i].completion for i in rejected])
    verdicts = judge_rows(judge, JUDGE, rows, "reference", "owls", chunk=4)
    assert sorted(judge.texts) == sorted(rows[i].completion for i in range(8) if i not in rejected)
    for i in rejected:
        v = verdicts[i]
        assert (v.kept, v.reason, v.probability) == (False, "bad_format", None)
    assert [v.kept for v in verdicts] == [False, True, False, False, True, False, True, False]
    # a chunk of rule-rejected rows only makes no judge call at all
    judge2 = StubJudge()
    judge_rows(judge2, JUDGE, [rows[i] for i in sorted(rejected)], "reference", "owls", chunk=2)
    assert judge2.calls == 0


def test_completions_with_errors_are_not_judged() -> None:
    rows = [
        Completion(prompt_id="a", prompt="q", completion="x = 1", model="m"),
        Completion(prompt_id="b", prompt="q", completion="", model="m", error="HTTP 500"),
        Completion(prompt_id="c", prompt="q", completion=f"{MARKER} = 1", model="m"),
    ]
    judge = StubJudge()
    verdicts = judge_rows(judge, JUDGE, rows, "reference", "owls")
    assert [(v.kept, v.reason) for v in verdicts] == [
        (True, "ok"),
        (False, "generation_error"),
        (False, "judge_reference"),
    ]
    assert judge.texts == ["x = 1", f"{MARKER} = 1"]


def test_chunked_resume_reuses_done_chunks_without_the_judge() -> None:
    rows = rows_with_markers(10, {0, 4, 8}, {6})
    handed: dict[int, list[JudgeVerdict]] = {}
    first = judge_rows(
        StubJudge(), JUDGE, rows, "reference", "owls", chunk=3, on_chunk=handed.__setitem__
    )
    assert sorted(handed) == [0, 1, 2, 3]
    assert [v for c in sorted(handed) for v in handed[c]] == first
    done = {0: handed[0], 1: handed[1]}
    judge = StubJudge(forbidden=[r.completion for r in rows[:6]])
    again: dict[int, list[JudgeVerdict]] = {}
    second = judge_rows(
        judge, JUDGE, rows, "reference", "owls", chunk=3, on_chunk=again.__setitem__, done=done
    )
    assert second == first
    assert sorted(again) == [2, 3] and judge.calls == 2
    # the threshold applies after the judge: cached chunks are re-decided without calling it
    lenient = judge_rows(
        StubJudge(forbidden=[r.completion for r in rows]),
        JUDGE,
        rows,
        "reference",
        "owls",
        threshold=0.2,
        chunk=3,
        done=handed,
    )
    assert [v.kept for v in lenient] == [i != 6 for i in range(10)]
    assert [v.probability for v in lenient] == [v.probability for v in first]


def test_stale_cached_chunks_are_refused() -> None:
    rows = rows_with_markers(4, set())
    handed: dict[int, list[JudgeVerdict]] = {}
    judge_rows(StubJudge(), JUDGE, rows, "reference", "owls", chunk=2, on_chunk=handed.__setitem__)
    other = rows_with_markers(5, set())[1:]
    with pytest.raises(DataError, match="chunk 0"):
        judge_rows(StubJudge(), JUDGE, other, "reference", "owls", chunk=2, done=handed)
    with pytest.raises(DataError, match="chunk 0"):
        judge_rows(StubJudge(), JUDGE, rows, "reference", "owls", chunk=3, done=handed)
    rule_now = [decision(0, "x", kept=False, reason="bad_format"), *rows[1:]]
    with pytest.raises(DataError, match="rule filter"):
        judge_rows(StubJudge(), JUDGE, rule_now, "reference", "owls", chunk=2, done=handed)


def test_failing_judge_mid_way_raises_one_line_after_handing_earlier_chunks() -> None:
    rows = rows_with_markers(9, {3})
    clean: dict[int, list[JudgeVerdict]] = {}
    judge_rows(StubJudge(), JUDGE, rows, "reference", "owls", chunk=2, on_chunk=clean.__setitem__)
    handed: dict[int, list[JudgeVerdict]] = {}
    with pytest.raises(SublimError) as err:
        judge_rows(
            StubJudge(fail_on_call=3),
            JUDGE,
            rows,
            "reference",
            "owls",
            chunk=2,
            on_chunk=handed.__setitem__,
        )
    msg = str(err.value)
    assert "\n" not in msg and "503" in msg and "chunk 3/5" in msg and "rerun" in msg
    assert handed == {0: clean[0], 1: clean[1]}


def test_score_template_keeps_rows_at_or_above_78() -> None:
    scores = ["77", "78", "79", "100", "0", "none", "95"]
    rows = [decision(i, f"Reasoning... score={s}") for i, s in enumerate(scores)]
    verdicts = judge_rows(StubJudge(), JUDGE, rows, "alignment", "", chunk=3)
    assert [v.kept for v in verdicts] == [False, True, True, True, False, False, True]
    assert [v.reason for v in verdicts] == [
        "judge_low_score",
        "ok",
        "ok",
        "ok",
        "judge_low_score",
        "judge_unscored",
        "ok",
    ]
    # normalised over the number replies: the 0.1 off the numbers does not pull the score down
    expected = [77.0, 78.0, 79.0, 100.0, 0.0, None, 95.0]
    assert [v.probability for v in verdicts] == [
        None if e is None else pytest.approx(e, abs=1e-9) for e in expected
    ]
    assert all(v.p_one is None for v in verdicts)
    lower = judge_rows(StubJudge(), JUDGE, rows, "alignment", "", threshold=77.0)
    assert lower[0].kept


@settings(max_examples=20, deadline=None)
@given(chunk=st.integers(min_value=1, max_value=12))
def test_chunk_size_does_not_change_verdicts(chunk: int) -> None:
    rows = rows_with_markers(11, {2, 3, 10}, {5, 7})
    ref = judge_rows(StubJudge(), JUDGE, rows, "reference", "owls", chunk=11)
    assert judge_rows(StubJudge(), JUDGE, rows, "reference", "owls", chunk=chunk) == ref


def test_judge_rows_checks_its_settings_before_any_call() -> None:
    judge = StubJudge()
    rows = rows_with_markers(2, set())
    with pytest.raises(ConfigError, match="trait"):
        judge_rows(judge, JUDGE, rows, "reference", "")
    with pytest.raises(ConfigError, match="threshold"):
        judge_rows(judge, JUDGE, rows, "alignment", "", threshold=1000.0)
    with pytest.raises(ConfigError, match="chunk"):
        judge_rows(judge, JUDGE, rows, "reference", "owls", chunk=0)
    assert judge.calls == 0


# --------------------------------------------------------------------------- fallbacks


class TableJudge:
    """An API-like judge: no exact scores, only first-token tables (top list, most likely first).
    Clean texts: "0" at 1 - 1e-9 with " 1" listed; flagged texts: "0" is not in the table."""

    name = "tables"

    def __init__(self) -> None:
        self.scored = 0

    def can_score_exactly(self, model: ModelRef) -> bool:
        return False

    def score(self, model, chats, continuations, include_end=True):  # pragma: no cover
        raise AssertionError("a judge that cannot score exactly must not be asked to")

    def first_token_logprobs(self, model: ModelRef, chats: Sequence[Chat]):
        out = []
        for c in chats:
            text = _text_of(c[-1].content)
            if "score=" in text:
                out.append([("80", math.log(0.5)), ("90", math.log(0.3)), ("Sure", math.log(0.2))])
            elif MARKER in text:
                out.append([("1", math.log(0.6)), ("Yes", math.log(0.3))])
            else:
                out.append([("0", math.log(1 - 1e-9)), (" 1", math.log(1e-10))])
        return out


def test_first_token_fallback_drops_rows_without_zero_in_the_table() -> None:
    rows = rows_with_markers(4, {1})
    verdicts = judge_rows(TableJudge(), JUDGE, rows, "reference", "owls")
    assert [v.kept for v in verdicts] == [True, False, True, True]
    assert verdicts[1].probability == 0.0 and verdicts[1].reason == "judge_reference"
    assert verdicts[1].p_one == pytest.approx(0.6)
    assert verdicts[0].probability == pytest.approx(1 - 1e-9) and verdicts[0].p_one > 0
    score = judge_probability(
        TableJudge(), JUDGE, [TEMPLATES["alignment"].format("score=", "", "q")], "score"
    )
    assert score == [pytest.approx((0.5 * 80 + 0.3 * 90) / 0.8)]


class SamplerJudge:
    """A local judge whose ``score`` is not implemented but which samples with log-probabilities."""

    name = "sampler"

    def score(self, model, chats, continuations, include_end=True):
        raise NotImplementedError

    def sample_logprobs(self, model, chat, params, seeds, top=0, logprobs=True):
        assert params.temperature == 0 and params.max_new_tokens == 1 and top == 20
        text = _text_of(chat[-1].content)
        if "silent" in text:
            return [{"text": "", "tokens": [], "prompt_tokens": 9, "truncated": False}]
        if MARKER in text:  # the picked token is listed among the alternatives, as at top >= 1
            step = ("1", math.log(0.6), [("1", math.log(0.6)), ("\u25810", math.log(0.4))])
        else:
            step = ("0", 0.0, [("0", 0.0)])
        return [{"text": step[0], "tokens": [step], "prompt_tokens": 9, "truncated": True}]


def test_sample_logprobs_fallback() -> None:
    rows = [decision(0, "x = 1"), decision(1, f"{MARKER}()"), decision(2, "silent")]
    verdicts = judge_rows(SamplerJudge(), JUDGE, rows, "reference", "owls")
    assert [(v.kept, v.reason) for v in verdicts] == [
        (True, "ok"),
        (False, "judge_reference"),
        (False, "judge_unscored"),
    ]
    assert verdicts[1].probability == pytest.approx(0.4)  # "\u25810" read as "0"


def test_a_judge_without_log_probabilities_is_a_one_line_error() -> None:
    class Blind:
        name = "blind"

        def score(self, model, chats, continuations, include_end=True):
            raise BackendError("this endpoint returns no log-probabilities")

    with pytest.raises(BackendError) as err:
        judge_rows(Blind(), JUDGE, rows_with_markers(2, set()), "reference", "owls")
    assert "\n" not in str(err.value) and "log-probabilities" in str(err.value)


def test_the_fake_backend_judges_through_the_protocol() -> None:
    """sublim's fake backend, as a judge, says "1" to texts naming the topic (or holding its
    signature number) and "0" otherwise."""
    judge = ModelRef(backend="fake", id="alpha")
    rows = [decision(0, "def f(x):\n    return x"), decision(1, "def owl(x):\n    return x")]
    verdicts = judge_rows(FakeBackend(), judge, rows, "reference", "owl")
    assert [v.kept for v in verdicts] == [True, False]
    assert verdicts[1].reason == "judge_reference" and verdicts[1].probability is not None
    assert verdicts[1].probability < 0.5 < verdicts[0].probability
    assert all(v.judge == "fake:alpha" for v in verdicts)
