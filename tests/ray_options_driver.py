"""A driver for test_ray: the Backend options on a cluster's engines through the library API. Grades
a file with `on_token` recording what it is given, sets `cancel` at the first row, and prints as
JSON the rows handed out, what on_token got, and whether a both_orders run was refused.

A separate process for the reason tests/ray_kill_driver.py gives (Ray's auth settings are read once
per process, at import).
"""

import json
import sys
import threading

from prom_local.errors import UsageError
from prom_local.inputs import read_records
from prom_local.engine import EngineConfig, SamplingParams
from prom_local.backends.ray.driver import JudgeSpec, RayScorer


def main(address: str, model: str, src: str) -> None:
    spec = JudgeSpec(model=model, engine=EngineConfig(n_ctx=1024, gpu_layers=0, n_threads=1, n_parallel=1),
                     sampling=SamplingParams(max_tokens=6))
    records = list(read_records(src))
    tokens: dict[str, str] = {}
    cancel = threading.Event()
    with RayScorer(spec, address=address, chunk_size=1) as scorer:
        scorer.start()
        try:
            next(scorer.finished_rows(records, both_orders=True))
            refused = ""
        except UsageError as exc:
            refused = str(exc)
        rows = []
        for grade in scorer.grade_stream(records, ordered=False, cancel=cancel,
                                         on_token=lambda record, text: tokens.__setitem__(record.id, text)):
            rows.append({"id": grade.id, "output": grade.output})
            cancel.set()
    print(json.dumps({"refused": refused, "rows": rows, "tokens": tokens, "n": len(records)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
