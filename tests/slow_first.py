"""A scripted engine whose first record is the slowest: every later record finishes (and its row is
out) before the first one runs, at which point `before_first()` is called. Used in-process by
test_rows_as_finished, and run as a script it is the process that test kills with SIGKILL:

    python tests/slow_first.py MODEL.gguf IN.jsonl OUT.jsonl

scores IN into OUT; once every record but the first has its row it prints "rest written" and
blocks on stdin, holding the first record in flight until it is killed.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable

from fake_engine import FakeEngine, Reply

from prom_local.engine import GenRequest


class SlowFirst(FakeEngine):
    """Runs every request after the first, then `before_first()`, then the first."""

    def __init__(self, *args, before_first: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self.before_first = before_first

    def generate(self, requests: Iterable[GenRequest]):
        held = list(requests)   # all in flight at once, as a --parallel N engine holds them
        yield from super().generate(held[1:])
        self.before_first()
        yield from super().generate(held[:1])


def main(model: str, src: str, out: str) -> None:
    from prom_local.judging.judge import Judge
    from prom_local.runs.score_file import score_file

    def hold() -> None:
        print("rest written", flush=True)
        sys.stdin.read()   # until killed

    with Judge.with_engine(SlowFirst(model, Reply("Right. [RESULT] 4"), before_first=hold)) as judge:
        score_file(judge, src, out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
