"""Record -> prompt text -> token ids, with control tokens taken only from the chat template.

The response being graded is usually another model's output: untrusted text. Tokenizing the whole
rendered prompt with special-token parsing on (what transformers' `apply_chat_template` and
llama.cpp's server do) lets a response that contains `<|eot_id|><|start_header_id|>assistant...`
close the user turn and write a verdict in the assistant's name. So the record's fields are marked
while the template renders; a control token counts only where the template itself wrote it, and
the same characters inside record text are tokenized as ordinary text.

For a prompt whose record text holds no such strings the ids are exactly those of tokenizing the
whole text with special parsing on: llama.cpp itself cuts the text at special tokens and tokenizes
the pieces between them as plain text, and we cut at the same places.
"""

from __future__ import annotations

import re
import secrets
from functools import lru_cache
from typing import TYPE_CHECKING, Callable

from .chat_template import render_chat
from ..errors import PromLocalError
from .prompts import PromptProfile
from .records import AnyRecord

if TYPE_CHECKING:  # the engine imports llama.cpp; rendering text needs no model at all
    from ..engine import LlamaModel

# (text, from_record): the prompt as the template laid it out, record text flagged.
Pieces = list[tuple[str, bool]]


def render_pieces(record: AnyRecord, profile: PromptProfile, model: "LlamaModel | None" = None) -> Pieces:
    """The full prompt (special tokens included) as pieces, with what came from the record flagged.

    The GGUF's own chat template is used when it has one, else the profile's (so text renders with
    no model file at all); a profile whose template_source is "profile" always uses its own.
    """
    return render_message_pieces(lambda wrap: profile.messages(record, wrap=wrap), model,
                                 fallback_template=profile.chat_template, fallback_bos=profile.bos_token,
                                 own_template=profile.template_source == "profile")


def render_message_pieces(messages: Callable[[Callable[[str], str]], list[dict[str, str]]],
                          model: "LlamaModel | None", *, fallback_template: str,
                          fallback_bos: str = "", own_template: bool = False) -> Pieces:
    """Any chat (a judge prompt, or an HTTP client's messages) as pieces, with text flagged.

    `messages(wrap)` builds the messages, passing every untrusted value through `wrap`: that text
    is flagged, so it is tokenized as plain text wherever it holds control-token strings.
    `own_template`: render with fallback_template even when the GGUF has a template (the BOS and
    EOS texts still come from the model's vocabulary).
    """
    use_gguf = model is not None and bool(model.chat_template) and not own_template
    template = model.chat_template if use_gguf else fallback_template  # type: ignore[union-attr]
    if model is not None and (use_gguf or own_template):
        bos, eos = model.special_text("bos"), model.special_text("eos")
    else:
        bos, eos = fallback_bos, ""
    # A fresh nonce per render: record text cannot contain the marks, whatever it holds.
    nonce = secrets.token_hex(8)
    opening, closing = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"

    def mark(value: str) -> str:
        # Whitespace at the edges stays outside the marks, so a template's `| trim` sees the same
        # characters it would without them (and whitespace is never a control token anyway).
        core = value.strip()
        if not core:
            return value
        start = value.index(core)
        return value[:start] + opening + core + closing + value[start + len(core):]

    marked = render_chat(template, messages(mark), bos_token=bos, eos_token=eos)
    plain = render_chat(template, messages(str), bos_token=bos, eos_token=eos)
    pieces: Pieces = []
    for i, part in enumerate(re.split(f"{re.escape(opening)}|{re.escape(closing)}", marked)):
        if part:
            pieces.append((part, i % 2 == 1))
    if "".join(text for text, _ in pieces) != plain or opening in plain:
        # Only a template that inspects or rewrites message text character by character could do
        # this; refusing is better than tokenizing record text as template text.
        raise PromLocalError("this chat template changes the record text it renders, so prom-local "
                             "cannot tell record text from template text; use a GGUF whose template "
                             "only places message content")
    return pieces


def render_prompt(record: AnyRecord, profile: PromptProfile, model: "LlamaModel | None" = None) -> str:
    """The full text the model sees, special tokens included."""
    return "".join(text for text, _ in render_pieces(record, profile, model))


def tokenize_pieces(model: "LlamaModel", pieces: Pieces) -> list[int]:
    """Token ids of a rendered prompt: control tokens where the template wrote them, text elsewhere."""
    special = _special_pattern(model)
    ids: list[int] = []
    run: list[str] = []   # text between two template control tokens, tokenized in one go

    def flush() -> None:
        if run:
            ids.extend(model.tokenize("".join(run), special=False))
            run.clear()

    for text, from_record in pieces:
        if from_record or special is None:
            run.append(text)
            continue
        at = 0
        for match in special.finditer(text):
            run.append(text[at:match.start()])
            flush()
            ids.extend(model.tokenize(match.group(0), special=True))
            at = match.end()
        run.append(text[at:])
    flush()
    return ids


def tokenize_prompt(record: AnyRecord, profile: PromptProfile, model: "LlamaModel") -> list[int]:
    return tokenize_pieces(model, render_pieces(record, profile, model))


def _special_pattern(model: "LlamaModel") -> "re.Pattern[str] | None":
    return _compile_special(model.control_token_texts())


@lru_cache(maxsize=8)
def _compile_special(texts: tuple[str, ...]) -> "re.Pattern[str] | None":
    """A regex for the texts that special-token parsing turns into control ids, longest first (as
    llama.cpp matches them)."""
    ordered = sorted(set(texts), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered))) if ordered else None


__all__ = ["Pieces", "render_message_pieces", "render_pieces", "render_prompt", "tokenize_pieces", "tokenize_prompt"]
