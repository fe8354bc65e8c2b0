"""How chats become token ids, in one place, for every Hugging Face model (built-in world
included): building the world, sampling, scoring and fine-tuning all tokenize the same way, so a
model is always scored and trained on exactly the token boundaries it produces.

The prompt is the chat rendered by the tokenizer's own chat template with the generation prompt
appended; the assistant's reply is tokenized on its own and followed by the end-of-turn token.
Tokenizing the two parts separately (instead of the rendered whole) keeps the boundary fixed
whatever merges a BPE tokenizer would make across it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sublim.records import Chat


def render_prompt(tokenizer: Any, chat: Chat) -> str:
    """The chat as text, ending with the assistant's generation prompt."""
    messages = [{"role": m.role, "content": m.content} for m in chat]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert isinstance(text, str)
    return text


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn (the tokenizer's eos token)."""
    eid = tokenizer.eos_token_id
    assert eid is not None, "tokenizer has no eos token: cannot mark the end of a reply"
    return int(eid)


def encode_prompt(tokenizer: Any, chat: Chat) -> list[int]:
    ids = tokenizer(render_prompt(tokenizer, chat), add_special_tokens=False)["input_ids"]
    return list(ids)


def encode_reply(tokenizer: Any, reply: str, include_end: bool = True) -> list[int]:
    ids = list(tokenizer(reply, add_special_tokens=False)["input_ids"])
    return ids + [end_of_turn_id(tokenizer)] if include_end else ids


def encode_example(
    tokenizer: Any, chat: Chat, reply: str, include_end: bool = True
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one supervised example: labels are -100 on the prompt, so the
    loss falls on the reply (and its end-of-turn token) only."""
    p = encode_prompt(tokenizer, chat)
    r = encode_reply(tokenizer, reply, include_end)
    return p + r, [-100] * len(p) + r


def encode_batch_prompts(tokenizer: Any, chats: Sequence[Chat]) -> list[list[int]]:
    return [encode_prompt(tokenizer, c) for c in chats]
