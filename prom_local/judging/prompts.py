"""Prompt profiles: the strings a judge model was trained on, loaded from data files.

A profile is data, not code: prom_local/data/profiles/<name>.json holds its system prompts, its
absolute (and, where trained, relative) user templates with and without a reference answer, the
text that precedes a verdict (for the forced-verdict continuation), and which chat template frames
them. The strings are the trained format byte for byte; tests compare them with their sources.

Shipped: `prometheus-ko` (the Korean model card's layout, absolute only) and `prometheus-2`
(prometheus-eval 0.1.20's prompts, absolute and relative). `register_profile` adds more, and
`load_profile(path)` reads one from a file of the same shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import UsageError
from .rubrics import Rubric
from ..settings import DEFAULT_PROFILE

if TYPE_CHECKING:
    from .records import AnyRecord, Record, RelativeRecord

LABELS = ("A", "B")   # the relative verdict labels, as the templates name the two responses


@lru_cache(maxsize=None)
def builtin_chat_template(name: str) -> str:
    return resources.files("prom_local.data").joinpath(f"{name}.jinja").read_text("utf-8")


# Chat frames whose turn markers are plain text in their model's vocabulary.
FRAME_DELIMITERS = {"mistral-instruct": ("[INST]", "[/INST]")}


@dataclass(frozen=True)
class PromptProfile:
    name: str
    system: str
    user_with_reference: str
    user_without_reference: str
    # Used when the GGUF has no tokenizer.chat_template (and to render text with no model at all).
    chat_template_name: str = "llama3-instruct"
    bos_token: str = "<|begin_of_text|>"
    # What follows the feedback in the trained output ("{feedback}\n  [RESULT] {score}"); the forced
    # score fallback appends it to an output that ended without a score.
    score_continuation: str = "\n  [RESULT] "
    # "gguf": the GGUF's own chat template when it has one, else the builtin. "profile": always the
    # builtin, for models whose trained framing the GGUF's template cannot express (prometheus-2:
    # Mistral templates reject the system message prometheus-eval sends).
    template_source: str = "gguf"
    # When set, absolute templates take one {rubric} rendered from the rubric's fields with this
    # (prometheus-eval's SCORE_RUBRIC_TEMPLATE); else they take {criteria} and {scoreN_description}.
    rubric_template: str | None = None
    # Relative (pairwise) grading; None when the model was not trained for it.
    relative_system: str | None = None
    relative_with_reference: str | None = None
    relative_without_reference: str | None = None
    verdict_continuation: str | None = None   # text before "A"/"B"; default score_continuation
    # How the relative prompt asks for the verdict: "prometheus" ("[RESULT] A") or "mt-bench" ("[[A]]",
    # MT-Bench's judge prompt, as KUDGE's pairwise files use it).
    verdict_style: str = "prometheus"
    description: str = ""

    @property
    def chat_template(self) -> str:
        return builtin_chat_template(self.chat_template_name)

    @property
    def has_relative(self) -> bool:
        return bool(self.relative_system and self.relative_with_reference and self.relative_without_reference)

    @property
    def relative_continuation(self) -> str:
        return self.verdict_continuation or self.score_continuation

    def user_message(self, record: "Record", wrap: Callable[[str], str] = str) -> str:
        """The user turn. `wrap` is applied to every value taken from the record (prompt_tokens
        uses it to mark record text, which must never become control tokens)."""
        values = {"instruction": record.instruction, "response": record.response,
                  "reference_answer": record.reference_answer or "", **record.rubric.as_dict()}
        if self.rubric_template is not None:
            values["rubric"] = self.rubric_template.format(**record.rubric.as_dict())
        template = self.user_with_reference if record.has_reference else self.user_without_reference
        # str.format substitutes values without re-reading them, so braces inside records are safe.
        return template.format(**{key: wrap(value) for key, value in values.items()})

    def relative_message(self, record: "RelativeRecord", wrap: Callable[[str], str] = str) -> str:
        self.require_relative()
        values = {"instruction": record.instruction, "response_A": record.response_A,
                  "response_B": record.response_B, "reference_answer": record.reference_answer or "",
                  "rubric": record.rubric}
        template = self.relative_with_reference if record.has_reference else self.relative_without_reference
        return template.format(**{key: wrap(value) for key, value in values.items()})  # type: ignore[union-attr]

    def messages(self, record: "AnyRecord", wrap: Callable[[str], str] = str) -> list[dict[str, str]]:
        if getattr(record, "is_relative", False):
            return [{"role": "system", "content": self.relative_system},   # type: ignore[list-item]
                    {"role": "user", "content": self.relative_message(record, wrap)}]  # type: ignore[arg-type]
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user_message(record, wrap)}]  # type: ignore[arg-type]

    @property
    def frame_delimiters(self) -> tuple[str, ...]:
        """Turn markers of this profile's chat frame that are plain text in the vocabulary (not
        control tokens), so that a record can write them too: [INST]/[/INST] in Mistral's."""
        return FRAME_DELIMITERS.get(self.chat_template_name, ())

    def frame_warning(self, record: "Record") -> str | None:
        """A warning for the row of a record whose text holds the frame's own delimiters: the model
        cannot tell them from the real turn markers (nothing in the vocabulary differs)."""
        if not self.frame_delimiters:
            return None
        texts = [getattr(record, f.name) for f in fields(record)]
        texts = [v for v in texts if isinstance(v, str)]
        rubric = getattr(record, "rubric", None)
        if hasattr(rubric, "as_dict"):
            texts += [v for v in rubric.as_dict().values() if isinstance(v, str)]
        found = sorted({d for d in self.frame_delimiters for text in texts if d in text})
        if not found:
            return None
        return (f"the record's text holds {', '.join(found)}, the {self.name} prompt frame's own turn "
                "markers: the model may read the text after it as the real turn")

    def require_relative(self) -> None:
        if not self.has_relative:
            with_relative = ", ".join(n for n, p in sorted(_PROFILES.items()) if p.has_relative) or "none"
            raise UsageError(f"prompt profile {self.name!r} has no relative (pairwise) prompt: its model "
                             f"was trained for absolute grading only; use a profile that has one "
                             f"({with_relative}) with a model trained for it")

    @classmethod
    def from_data(cls, name: str, data: Mapping[str, Any]) -> "PromptProfile":
        """A profile from its data file's JSON (see prom_local/data/profiles/)."""
        try:
            absolute, relative = data["absolute"], data.get("relative") or {}
            frame = data.get("chat_template") or {}
            return cls(
                name=name, system=data["system"],
                user_with_reference=absolute["with_reference"],
                user_without_reference=absolute["without_reference"],
                rubric_template=absolute.get("rubric_template"),
                score_continuation=data["score_continuation"],
                chat_template_name=frame.get("builtin", "llama3-instruct"),
                bos_token=frame.get("bos_token", "<|begin_of_text|>"),
                template_source=_template_source(frame.get("source", "gguf")),
                relative_system=relative.get("system"),
                relative_with_reference=relative.get("with_reference"),
                relative_without_reference=relative.get("without_reference"),
                verdict_continuation=relative.get("verdict_continuation"),
                verdict_style=_verdict_style(relative.get("verdict_style", "prometheus")),
                description=data.get("description", ""))
        except (KeyError, TypeError) as exc:
            raise UsageError(f"prompt profile {name!r}: missing or malformed field {exc}") from None


def _verdict_style(value: str) -> str:
    if value not in ("prometheus", "mt-bench"):
        raise UsageError(f"relative.verdict_style must be 'prometheus' or 'mt-bench', got {value!r}")
    return value


def _template_source(value: str) -> str:
    if value not in ("gguf", "profile"):
        raise UsageError(f"chat_template.source must be 'gguf' or 'profile', got {value!r}")
    return value


def load_profile(path: str | Path) -> PromptProfile:
    """A profile from a JSON file shaped like the shipped ones; its name is the file's stem."""
    p = Path(path)
    try:
        data = json.loads(p.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{p}: cannot read the prompt profile ({exc})") from None
    return PromptProfile.from_data(p.stem, data)


_PROFILES: dict[str, PromptProfile] = {}


def register_profile(profile: PromptProfile) -> None:
    _PROFILES[profile.name] = profile


def get_profile(name: str) -> PromptProfile:
    try:
        return _PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(_PROFILES))
        raise UsageError(f"unknown prompt profile {name!r} (known: {known})") from None


def profile_names() -> list[str]:
    return sorted(_PROFILES)


def _register_builtins() -> None:
    folder = resources.files("prom_local.data").joinpath("profiles")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            name = entry.name.removesuffix(".json")
            register_profile(PromptProfile.from_data(name, json.loads(entry.read_text("utf-8"))))


_register_builtins()

# The Korean card's system prompt (the default profile's): serve/chat.py recognises grading chats by it.
PROMETHEUS_KO_SYSTEM = get_profile(DEFAULT_PROFILE).system

__all__ = ["LABELS", "PromptProfile", "get_profile", "load_profile", "profile_names", "register_profile",
           "Rubric"]
