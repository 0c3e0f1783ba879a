"""Score rubrics: a criterion plus one description per score 1..5, and the presets people start from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

SCORES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Rubric:
    criteria: str
    descriptions: tuple[str, str, str, str, str]

    def as_dict(self) -> dict[str, str]:
        """prometheus-eval's SCORE_RUBRIC_TEMPLATE keys, so rubrics move between the two tools."""
        out = {"criteria": self.criteria}
        for score, text in zip(SCORES, self.descriptions):
            out[f"score{score}_description"] = text
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "Rubric":
        """Accepts `criteria` + `score{N}_description` keys (also with the Feedback-Collection `orig_`
        prefix). Raises KeyError naming the first missing key, TypeError for non-strings."""
        def get(key: str) -> str:
            for name in (key, f"orig_{key}"):
                if name in data and data[name] is not None:
                    value = data[name]
                    if not isinstance(value, str):
                        raise TypeError(name)
                    if not value.strip():
                        raise KeyError(name)
                    return value
            raise KeyError(key)

        return cls(get("criteria"), tuple(get(f"score{s}_description") for s in SCORES))  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str) -> "Rubric":
        """prometheus-eval passes rubrics as one pre-rendered string ("[criteria]\\nScore 1: ...").
        Accept that form too, so its users can switch without rewriting rubrics."""
        text = text.strip()
        if text.startswith("{"):
            return cls.from_mapping(json.loads(text))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise ValueError("empty rubric")
        criteria = lines[0]
        if criteria.startswith("[") and criteria.endswith("]"):
            criteria = criteria[1:-1]
        descriptions: dict[int, str] = {}
        for line in lines[1:]:
            for score in SCORES:
                prefix = f"Score {score}:"
                if line.startswith(prefix):
                    descriptions[score] = line[len(prefix):].strip()
        missing = [s for s in SCORES if s not in descriptions]
        if missing:
            raise ValueError(f"rubric has no 'Score {missing[0]}:' line")
        return cls(criteria, tuple(descriptions[s] for s in SCORES))  # type: ignore[arg-type]


def presets() -> dict[str, Rubric]:
    """Built-in rubrics: the model card's sample rubric and Korean versions of prometheus-eval's."""
    raw = json.loads(resources.files("prom_local.data").joinpath("rubrics.json").read_text("utf-8"))
    return {name: Rubric.from_mapping(body) for name, body in raw.items()}
