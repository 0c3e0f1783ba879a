"""Writes k2-eval-pointwise.sample.csv: a synthetic stand-in for KUDGE's full pointwise file.

The full k2-eval-pointwise.csv (2,506 rows) is not in this repository. KUDGE's code reads two of its
columns, `judge_query` (src/main.py) and `final_score` (src/pointwise_eval.py); like the falseinfo
file it is taken to also hold `instruction` and `response`, which prom-local does not rely on.
The prompts are rendered with KUDGE's wording (kudge_files.render_query); the texts are made up,
short (so SmolLM2 grades them quickly) and hold what a CSV must quote: commas, quotes, new lines.
Run from the repository root: PYTHONPATH=. python tests/data/kudge/make_full_sample.py
"""

import csv
from pathlib import Path

from prom_local.inputs.kudge_files import Query, render_query
from prom_local.judging.rubrics import Rubric

RUBRIC = Rubric("답변이 질문에 정확하고 충실하게 답하는가?", (
    "질문과 무관하거나 틀린 답변이다.", "일부만 맞고 중요한 오류가 있다.", "대체로 맞지만 설명이 부족하다.",
    "정확하고 충분히 설명했다.", "정확하고, 근거가 풍부하며, \"설득력\" 있게 설명했다."))
ROWS = [  # (instruction, response, reference, final_score)
    ("대한민국의 수도는 어디인가요?", "부산입니다.", "대한민국의 수도는 서울입니다.", "1.0"),
    ("훈민정음을 만든 왕은 누구인가요?", "세종대왕이 만들었습니다, 1443년에.", "세종대왕이 1443년에 창제하고 1446년에 반포했습니다.", "4.5"),
    ("김치의 주재료를 두 가지 말해 주세요.", "배추와 고춧가루입니다.\n\n그 밖에 마늘, \"젓갈\"도 들어갑니다.", "배추와 고춧가루가 대표적입니다.", "5.0"),
    ("한글의 자음은 몇 개인가요?", "한 20개쯤 됩니다.", "현대 한글의 기본 자음은 14개입니다.", "2.5"),
    ("서울에서 부산까지 KTX로 얼마나 걸리나요?", "약 2시간 30분 정도 걸립니다.", "KTX로 약 2시간 30분에서 3시간이 걸립니다.", "3.0"),
]


def main() -> None:
    out = Path(__file__).with_name("k2-eval-pointwise.sample.csv")
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "response", "final_score", "judge_query"])
        for instruction, response, reference, score in ROWS:
            query = render_query(Query(instruction, response, reference, RUBRIC))
            writer.writerow([instruction, response, score, query])


if __name__ == "__main__":
    main()
