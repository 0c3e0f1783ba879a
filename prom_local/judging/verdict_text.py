"""Finding a verdict in a judge's output text: the score ("[RESULT] 4"), the pairwise winner
("[RESULT] A", MT-Bench's "[[A]]"), the text before it (the feedback), and the text that ends
where a verdict's label comes next (where the engine probes). verdicts.py configures one style
of verdict from these; nothing here knows tokens or rows."""

from __future__ import annotations

import re

# The card's pattern is r'\[RESULT\]\s+([0-5])'. We accept what a judge evidently means after the
# marker, in any case: "[RESULT] 4", "[Result]: 4", "[RESULT: 4]", "[RESULT] Score: 4", "[RESULT] (4)",
# "[RESULT] 4/5", "[RESULT] 4 out of 5", "[RESULT] score of 4". Never a false positive: only 1..5,
# not "10", "4.5", "3-4", "4/10" or "4 out of 10", and not a marker in quotes (a verdict quoted from
# the graded response, which is untrusted text). Without a marker nothing counts, unlike
# prometheus-eval's parser: the rubric the model reads is full of "Score 4:" lines.
_MARKER = r"\[\s*RESULT\s*(?:\]|:)"
_DECORATION = r"[\s:*]*(?:(?:score\s+of|score|result)\s*:?\s*)?[(\[]?\s*"
SCORE_PATTERN = re.compile(
    _MARKER + _DECORATION
    + r"(?P<score>[1-5])(?!\d)(?![.,]\d)(?![ \t]*[-~–][ \t]*\d)"
    + r"(?:\s*/\s*(?P<over>\d+)|\s+out\s+of\s+(?P<outof>\d+))?",
    re.IGNORECASE)
FEEDBACK_PREFIX = re.compile(r"^\s*Feedback\s*:\s*", re.IGNORECASE)
# The output so far ends where the score digit comes next: the engine probes P(1..5) there.
MARKER_AT_END = re.compile(_MARKER + _DECORATION + r"$", re.IGNORECASE)
_OPENING_QUOTES = "\"'`\u201c\u2018\u300c\u300e"
_CLOSING_QUOTES = "\"'`\u201d\u2019\u300d\u300f"


def _is_verdict(text: str, match: re.Match[str]) -> bool:
    scale = match.group("over") or match.group("outof")
    if scale is not None and int(scale) != 5:
        return False
    # A quote mark right against the marker or the score: `"[RESULT] 5"` is cited, not concluded.
    before = text[match.start() - 1: match.start()]
    after = text[match.end():].lstrip(")]*")[:1]
    return not ((before and before in _OPENING_QUOTES) or (after and after in _CLOSING_QUOTES))


def find_score(text: str) -> re.Match[str] | None:
    """The last valid verdict in text: when a model restates its verdict, the final one counts."""
    last = None
    for match in SCORE_PATTERN.finditer(text):
        if _is_verdict(text, match):
            last = match
    return last


def extract_score(text: str) -> int | None:
    """The score in a judge's output, or None when it holds no valid `[RESULT] 1..5`."""
    match = find_score(text)
    return int(match.group("score")) if match else None


def feedback_before(text: str, find, at_end: re.Pattern[str]) -> str:
    """The feedback part of an output: before the verdict `find` finds (or, with none, before the
    marker `at_end` finds at the end), without a leading `Feedback:`."""
    match = find(text) or at_end.search(text)
    body = text[: match.start()] if match else text
    return FEEDBACK_PREFIX.sub("", body).strip()


def split_feedback(text: str) -> str:
    """The feedback of an absolute output: before its score's marker."""
    return feedback_before(text, find_score, MARKER_AT_END)


# -- relative (pairwise) verdicts: "[RESULT] A" / "[RESULT] B" -------------------------------------
# prometheus-eval's relative parser accepts, case-insensitively, "[RESULT] A", "[RESULT: A]",
# "[Result] Response A", "[Response A]" and a line "Result: A", each only when nothing but a
# closing bracket follows on its line. We accept the same forms, plus decorations a judge evidently
# means ("[RESULT] (A)", "**A**", "A."), with two deliberate differences (tests/test_relative.py):
# the LAST verdict counts (a model that restates its verdict means the final one; prometheus-eval
# takes the first), and a verdict in quotes is cited from the untrusted responses, not concluded.
_REL_MARKER = r"(?:\[\s*RESULT\s*(?:\]|:)[\s:*]*(?:Response\s+)?|\[\s*Response\s+|(?:^|(?<=\n))Result:?[ \t]*)"
WINNER_PATTERN = re.compile(
    _REL_MARKER + r"[(\[*]*\s*(?P<label>[AB])(?![A-Za-z0-9])[\])*.]*[ \t]*(?=\n|$)",
    re.IGNORECASE)
# The output so far ends where the verdict label comes next: the engine probes P(A), P(B) there.
WINNER_AT_END = re.compile(r"\[\s*RESULT\s*(?:\]|:)[\s:*]*(?:Response\s*)?[(\[*]*\s*$", re.IGNORECASE)


def find_winner(text: str) -> re.Match[str] | None:
    """The last valid relative verdict in text (group "label": A or B, any case)."""
    last = None
    for match in WINNER_PATTERN.finditer(text):
        before = text[match.start() - 1: match.start()]
        after = text[match.end():].lstrip()[:1]
        if (before and before in _OPENING_QUOTES) or (after and after in _CLOSING_QUOTES):
            continue
        last = match
    return last


def extract_winner(text: str) -> str | None:
    """"A" or "B" from a relative judge's output, or None when it states no verdict."""
    match = find_winner(text)
    return match.group("label").upper() if match else None


# MT-Bench's verdict, "[[A]]" / "[[B]]", for profiles whose pairwise prompt asks for it (KUDGE's,
# relative.verdict_style "mt-bench"). KUDGE's extract_pairwise takes the last [[...]]; so do we,
# for A or B only, and not when quoted (cited from a response).
BRACKET_WINNER = re.compile(r"\[\[\s*(?P<label>[AB])\s*\]\]", re.IGNORECASE)
BRACKET_AT_END = re.compile(r"\[\[\s*$")


def find_bracket_winner(text: str) -> re.Match[str] | None:
    last = None
    for match in BRACKET_WINNER.finditer(text):
        before = text[match.start() - 1: match.start()]
        after = text[match.end(): match.end() + 1]
        if not ((before and before in _OPENING_QUOTES) or (after and after in _CLOSING_QUOTES)):
            last = match
    return last


def split_relative_feedback(text: str, find=find_winner, at_end: re.Pattern[str] = WINNER_AT_END) -> str:
    """The feedback of a pairwise output: before its verdict (Prometheus' unless told)."""
    return feedback_before(text, find, at_end)
