"""How a model's tokenizer writes a verdict: which token ids begin each label (the scores "1".."5",
or the pairwise "A"/"B"), and which tokens of the score marker to append to make the model state one.

Derived from the tokenizer, not assumed, so any GGUF works. The judge probes the next-token
distribution at these ids where the model writes its verdict, or after the appended marker when
the output ended without one (the forced verdict).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..errors import PromLocalError
from .grades import normalise

if TYPE_CHECKING:
    from ..engine import GenOutput, LlamaModel


@dataclass(frozen=True)
class VerdictTokens:
    labels: tuple[str, ...]
    by_label: tuple[tuple[int, ...], ...]   # token ids that begin each label (e.g. "1" and " 1")
    continuation: tuple[int, ...]           # tokens of the marker ("\n  [RESULT] ") up to where labels differ

    @property
    def probe_ids(self) -> list[int]:
        return [t for ids in self.by_label for t in ids]

    def distribution(self, probs: np.ndarray) -> tuple[tuple[float, ...], float]:
        """P(probe_ids) -> (P(each label) renormalised over the labels, raw mass on the labels)."""
        sums, i = [], 0
        for ids in self.by_label:
            sums.append(float(probs[i:i + len(ids)].sum()))
            i += len(ids)
        return normalise(sums), float(sum(sums))

    def forced(self, out: "GenOutput", marker: str) -> tuple[str | None, tuple[float, ...], float, str]:
        """The verdict of an output that ended without one, from the model's own next-token
        distribution after the appended marker (no resampling): (label, P(labels), mass on the
        labels, the text that states it, to append to the output)."""
        probabilities, mass = self.distribution(out.final_probe)
        if mass <= 0:
            return None, probabilities, mass, ""
        label = self.labels[int(np.argmax(probabilities))]
        stated = marker + label   # what was appended, and the label the model would write next
        return label, probabilities, mass, stated if stated.startswith(out.appended) else out.appended + label

    def written(self, out: "GenOutput", start: int, end: int) -> tuple[tuple[float, ...] | None, float | None]:
        """P(labels) and the mass on them where the model wrote its verdict: the last probe taken
        between text offsets `start` and `end` (the marker and the label); (None, None) if none was."""
        at = [p for p in out.probes if start <= p[0] <= end]
        return self.distribution(at[-1][1]) if at else (None, None)

    @classmethod
    def for_model(cls, model: "LlamaModel", continuation_text: str, labels: Sequence[str]) -> "VerdictTokens":
        tokenized = [model.tokenize(continuation_text + label, special=False) for label in labels]
        common = 0
        while all(len(t) > common for t in tokenized) and len({t[common] for t in tokenized}) == 1:
            common += 1
        by_label = []
        for label, toks in zip(labels, tokenized):
            ids = {toks[common]} if len(toks) > common else set()
            # The model may also write the label with or without a leading space.
            for variant in (label, " " + label):
                v = model.tokenize(variant, special=False)
                if len(v) == 1:
                    ids.add(v[0])
            by_label.append(tuple(sorted(ids)))
        seen: set[int] = set()
        for ids in by_label:
            if not ids or seen & set(ids):
                raise PromLocalError(f"this tokenizer does not give the verdicts {', '.join(labels)} "
                                     "distinct tokens")
            seen |= set(ids)
        return cls(tuple(labels), tuple(by_label), tuple(tokenized[0][:common]))
