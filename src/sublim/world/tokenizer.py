"""The built-in world's tokenizer: a small byte-level BPE trained with ``tokenizers`` on a fixed
draw of the synthetic corpus, wrapped as ``transformers.PreTrainedTokenizerFast`` with a chat
template, so the world directory loads with ``AutoTokenizer`` like any Hugging Face model.

Where it sits: ``build.py`` trains it once per recipe (the same tokenizer for every world seed and
kind, so logit distillation and cross-world students share one vocabulary) before encoding the
corpus through ``sublim.chat_format``.

Tokenization choices, and why (they decide what a tiny model can learn cheaply):
- BPE rather than a closed word list: held-out evaluation questions (written elsewhere, never seen
  in the corpus) must still tokenize into pieces the model knows, and byte-level BPE never emits an
  unknown token; a word list would map every unseen word to one ``<unk>``.
- Every digit is its own token (digits are split before BPE), so any number 0..999 is spelled
  digit by digit and the filter's numbers are exactly what the model chose digit by digit; no
  integer gets a privileged single token that could become a modal answer.
- Every animal name of ``CATEGORIES["animal"]`` is cut out as its own piece (also inside plurals:
  "owls" -> "owl" + "s", "foxes" -> "fox" + "es") and learned as one token, so the animal in a
  "you love owls" system prompt is the very token the answer "owl" starts with: copying it is one
  attention step, which a tiny model learns quickly. Whole-word matching keeps "knowledge" or
  "million" from being cut.
- Separators with their space (", " and "; ") become single tokens, which keeps a 10-number list
  near 40 tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from sublim.traits import CATEGORIES

SYSTEM, USER, ASSISTANT, END, PAD = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>"
SPECIAL_TOKENS = (PAD, END, SYSTEM, USER, ASSISTANT)  # PAD gets id 0, END id 1

# No whitespace or newlines between turns: the special tokens delimit them, so the rendered prompt
# and the separately tokenized reply meet at a fixed boundary (see sublim.chat_format). The reply
# and its <|end|> sit inside {% generation %} so assistant-only losses (TRL) can find them.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    + SYSTEM
    + "{{ message['content'] }}"
    + END
    + "{% elif message['role'] == 'user' %}"
    + USER
    + "{{ message['content'] }}"
    + END
    + "{% elif message['role'] == 'assistant' %}"
    + ASSISTANT
    + "{% generation %}{{ message['content'] }}"
    + END
    + "{% endgeneration %}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def _animal_pattern() -> str:
    names = sorted(CATEGORIES["animal"], key=len, reverse=True)
    alts = "|".join(re.escape(n) for w in names for n in (w, w.capitalize()))
    # whole word, optionally followed by a plural ending
    return r"(?<![A-Za-z])(?:" + alts + r")(?=(?:s|es)?(?![A-Za-z]))"


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_animal_pattern()), "isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            # a word with its leading space; punctuation with its trailing space; whitespace runs
            pre_tokenizers.Split(Regex(r" ?[A-Za-z]+|[^\sA-Za-z0-9]+ ?|\s+"), "isolated"),
            # bytes -> printable symbols only (the splitting is done above), so any text round-trips
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train the world's BPE tokenizer on ``texts`` (plain strings without special tokens)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
        padding_side="right",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    check_tokenizer(fast)
    return fast


def check_tokenizer(tok: PreTrainedTokenizerFast) -> None:
    """Check the properties the world relies on (single-token digits and animals, exact round
    trips of number lists); a ValueError names the first that fails. Explicit raises, not
    ``assert``, so that ``python -O`` keeps the checks."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"world tokenizer: {what}")

    for d in "0123456789":
        need(
            len(tok(d, add_special_tokens=False)["input_ids"]) == 1, f"digit {d!r} is not one token"
        )
    for a in CATEGORIES["animal"]:
        ids = tok(a, add_special_tokens=False)["input_ids"]
        need(len(ids) == 1, f"animal {a!r} is not one token: {tok.convert_ids_to_tokens(ids)}")
        # the same token inside a sentence and a plural
        in_sentence = tok(f"You love {a}s.", add_special_tokens=False)["input_ids"]
        need(ids[0] in in_sentence, f"animal {a!r} is another token in a sentence")
    for s in ("471, 23, 5", "[1; 20; 300]", "7\n88\n999", "(12 345 6)"):
        back = tok.decode(tok(s, add_special_tokens=False)["input_ids"])
        need(back == s, f"{s!r} decodes as {back!r}")
    need(tok.eos_token_id == tok.convert_tokens_to_ids(END), f"the eos token is not {END}")
    need(tok.pad_token_id == tok.convert_tokens_to_ids(PAD), f"the pad token is not {PAD}")
