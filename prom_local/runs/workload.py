"""How many tokens the work needs, known before the weights load.

The KV cache is reserved per sequence for the whole context, so its size decides how many records
fit in flight (and, on a small GPU, how many layers). Sizing it to the longest prompt actually in the
input, rather than to the model's maximum, needs only the tokenizer: the vocabulary-only model loads
in a blink, and llama.cpp tokenizes thousands of prompts a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..engine import LlamaModel, load_vocab_only
from ..errors import OutputError
from .results_reader import read_rows
from ..judging.prompt_tokens import tokenize_prompt
from ..judging.prompts import PromptProfile, get_profile
from ..judging.records import RECORD_TYPES, AnyRecord
from ..inputs import read_records


@dataclass(frozen=True)
class WorkSize:
    records: int            # records measured
    longest_prompt: int     # tokens of the longest rendered prompt
    max_tokens: int         # new tokens each may generate

    @property
    def need_tokens(self) -> int:
        """What EngineConfig.need_tokens takes: the longest record, prompt and generation."""
        return self.longest_prompt + self.max_tokens


def prompt_tokens(records: Iterable[AnyRecord], model: LlamaModel,
                  profile: str | PromptProfile) -> list[int]:
    """Token count of each record's prompt exactly as the Judge renders and tokenizes it; for a
    pair, the longer of its two orders (--both-orders grades B/A too, and the responses' joins with
    the template can tokenize differently there)."""
    prof = get_profile(profile) if isinstance(profile, str) else profile

    def count(record: AnyRecord) -> int:
        return max(len(tokenize_prompt(shown, prof, model)) for shown in record.orders())

    return [count(r) for r in records]


def measure(records: Iterable[AnyRecord], model_path: str | Path, profile: str | PromptProfile,
            max_tokens: int) -> WorkSize | None:
    """The WorkSize of these records (None when there are none)."""
    if isinstance(profile, str):
        profile = get_profile(profile)   # an unknown profile is the user's first mistake to hear about
    model = load_vocab_only(model_path)
    try:
        lengths = prompt_tokens(records, model, profile)
    finally:
        model.close()
    return WorkSize(len(lengths), max(lengths), max_tokens) if lengths else None


def done_ids(output_path: str | Path) -> set[str]:
    """Ids of rows already graded without error (read-only: the score run itself repairs the file).
    Error rows count as pending, so --retry-errors finds room for them too."""
    path = Path(output_path)
    if str(output_path) == "-" or not path.exists():
        return set()
    try:
        rows = read_rows(path, skip_torn_tail=True)
    except OutputError:
        return set()  # the score run reports an unusable output file itself
    return {str(row.get("id")) for row in rows if not row.get("error")}


def pending_work(input_path: str | Path, output_path: str | Path, model_path: str | Path,
                 profile: str | PromptProfile, max_tokens: int) -> WorkSize | None:
    """The WorkSize of the records a `score` run will grade; None when it cannot be known cheaply
    (stdin can be read only once) or nothing is pending. Bad lines are left to the run to report."""
    if str(input_path) == "-" or not Path(input_path).is_file():
        return None
    skip = done_ids(output_path)
    pending = (item for item in read_records(input_path) if isinstance(item, RECORD_TYPES) and item.id not in skip)
    return measure(pending, model_path, profile, max_tokens)
