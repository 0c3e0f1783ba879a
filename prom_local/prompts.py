"""The trained prompt: system prompt + user message, in the exact bytes the model learned.

A `PromptProfile` is the seam for other Prometheus-style judges: it holds the strings a model was
trained on and the chat template to use when a GGUF carries none. Only the Korean Prometheus profile
ships today; `register_profile` adds more.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from .errors import UsageError
from .records import Record
from .rubrics import Rubric

# From the model card of nayohan/llama3-8b-it-prometheus-ko, byte for byte. The odd two-space
# indentation of the user template is what the model saw in training: do not "fix" it.
PROMETHEUS_KO_SYSTEM = (
    "###Task Description: An instruction (might include an Input inside it), a response to evaluate, "
    "a reference answer that gets a score of 5, and a score rubric representing a evaluation criteria "
    "are given.\n"
    "1. Write a detailed feedback that assess the quality of the response strictly based on the given "
    "score rubric, not evaluating in general.\n"
    "2. After writing a feedback, write a score that is an integer between 1 and 5. You should refer to "
    "the score rubric.\n"
    '3. The output format should look as follows: "Feedback: (write a feedback for criteria) [RESULT] '
    '(an integer number between 1 and 5)"\n'
    "4. Please do not generate any other opening, closing, and explanations."
)

PROMETHEUS_KO_USER_WITH_REFERENCE = (
    "###The instruction to evaluate: {instruction}\n"
    "  ###Response to evaluate: {response}\n"
    "  ###Reference Answer (Score 5): {reference_answer}\n"
    "  ###Score Rubrics: [{criteria}]\n"
    "  Score 1: {score1_description}\n"
    "  Score 2: {score2_description}\n"
    "  Score 3: {score3_description}\n"
    "  Score 4: {score4_description}\n"
    "  Score 5: {score5_description}\n"
    "  ###Feedback:"
)

PROMETHEUS_KO_USER_NO_REFERENCE = (
    "###The instruction to evaluate: {instruction}\n"
    "  ###Response to evaluate: {response}\n"
    "  ###Score Rubrics: [{criteria}]\n"
    "  Score 1: {score1_description}\n"
    "  Score 2: {score2_description}\n"
    "  Score 3: {score3_description}\n"
    "  Score 4: {score4_description}\n"
    "  Score 5: {score5_description}\n"
    "  ###Feedback:"
)


@lru_cache(maxsize=None)
def builtin_chat_template(name: str) -> str:
    return resources.files("prom_local.data").joinpath(f"{name}.jinja").read_text("utf-8")


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

    @property
    def chat_template(self) -> str:
        return builtin_chat_template(self.chat_template_name)

    def user_message(self, record: Record, wrap: Callable[[str], str] = str) -> str:
        """The user turn. `wrap` is applied to every value taken from the record (prompt_tokens
        uses it to mark record text, which must never become control tokens)."""
        values = {"instruction": record.instruction, "response": record.response,
                  "reference_answer": record.reference_answer or "", **record.rubric.as_dict()}
        template = self.user_with_reference if record.has_reference else self.user_without_reference
        # str.format substitutes values without re-reading them, so braces inside records are safe.
        return template.format(**{key: wrap(value) for key, value in values.items()})

    def messages(self, record: Record, wrap: Callable[[str], str] = str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user_message(record, wrap)}]


_PROFILES: dict[str, PromptProfile] = {}


def register_profile(profile: PromptProfile) -> None:
    _PROFILES[profile.name] = profile


def get_profile(name: str) -> PromptProfile:
    try:
        return _PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(_PROFILES))
        raise UsageError(f"unknown prompt profile {name!r} (known: {known})") from None


# nayohan/llama3-8b-it-prometheus-ko: Korean Feedback-Collection, absolute grading.
register_profile(PromptProfile(
    name="prometheus-ko",
    system=PROMETHEUS_KO_SYSTEM,
    user_with_reference=PROMETHEUS_KO_USER_WITH_REFERENCE,
    user_without_reference=PROMETHEUS_KO_USER_NO_REFERENCE,
))

__all__ = ["PromptProfile", "get_profile", "register_profile", "Rubric"]
