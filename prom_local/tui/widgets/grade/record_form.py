"""The record half of the grade form: instruction, response and an optional reference answer."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, TextArea

# (field id = the record key record_from_mapping names in its errors, label)
RECORD_FIELDS = (
    ("instruction", "Instruction"),
    ("response", "Response to grade"),
    ("reference_answer", "Reference answer (score 5, optional)"),
)


class RecordForm(Vertical):
    def compose(self) -> ComposeResult:
        for field, label in RECORD_FIELDS:
            yield Label(label, classes="field-label")
            yield TextArea(id=field, classes=f"field {field}", soft_wrap=True, tab_behavior="focus",
                           compact=True)

    def values(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for field, _ in RECORD_FIELDS:
            text = self.query_one(f"#{field}", TextArea).text
            out[field] = text if text.strip() or field != "reference_answer" else None
        return out

    def fill(self, instruction: str = "", response: str = "", reference_answer: str = "") -> None:
        for field, value in (("instruction", instruction), ("response", response),
                             ("reference_answer", reference_answer)):
            self.query_one(f"#{field}", TextArea).load_text(value)

    def clear(self) -> None:
        self.fill()
