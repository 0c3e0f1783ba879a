"""The rubric half of the grade form: a preset picker and the criteria + five score descriptions.

Built-in presets come from rubrics.presets(), saved ones from user_rubrics; this widget only shows
them and reports edits, it never reads or writes files itself.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Select, TextArea

from ....judging.rubrics import SCORES, Rubric

RUBRIC_FIELDS = (("criteria", "Criteria"),) + tuple(
    (f"score{s}_description", f"Score {s}") for s in SCORES)


def option_value(kind: str, name: str) -> str:
    return f"{kind}:{name}"


class RubricEditor(Vertical):
    def __init__(self, presets: dict[str, Rubric], mine: dict[str, Rubric], *, selected: str | None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self._presets = presets
        self._mine = mine
        self._selected = selected

    def compose(self) -> ComposeResult:
        yield Label("Rubric", classes="field-label")
        yield Select(self._options(), id="rubric-preset", prompt="custom rubric",
                     value=self._selected if self._selected else Select.NULL, compact=True)
        for field, label in RUBRIC_FIELDS:
            yield Label(label, classes="field-label")
            yield TextArea(id=field, classes=f"field rubric {field}", soft_wrap=True, tab_behavior="focus",
                           compact=True)

    def on_mount(self) -> None:
        if self._selected:
            self._load(self._selected)

    def _options(self) -> list[tuple[str, str]]:
        return ([(f"preset · {n}", option_value("preset", n)) for n in self._presets]
                + [(f"mine · {n}", option_value("mine", n)) for n in self._mine])

    def _rubric(self, value: str) -> Rubric | None:
        kind, _, name = value.partition(":")
        return (self._presets if kind == "preset" else self._mine).get(name)

    def _load(self, value: str) -> None:
        rubric = self._rubric(value)
        if rubric is not None:
            self.load_rubric(rubric)

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        if isinstance(event.value, str):
            self._load(event.value)

    def load_rubric(self, rubric: Rubric) -> None:
        for field, value in zip((f for f, _ in RUBRIC_FIELDS), (rubric.criteria, *rubric.descriptions)):
            self.query_one(f"#{field}", TextArea).load_text(value)

    def values(self) -> dict[str, str]:
        return {field: self.query_one(f"#{field}", TextArea).text for field, _ in RUBRIC_FIELDS}

    def set_saved(self, mine: dict[str, Rubric], select: str | None = None) -> None:
        """New list of saved rubrics (after a save); keeps the fields as they are."""
        self._mine = mine
        picker = self.query_one("#rubric-preset", Select)
        with picker.prevent(Select.Changed):
            picker.set_options(self._options())
            if select:
                picker.value = option_value("mine", select)
