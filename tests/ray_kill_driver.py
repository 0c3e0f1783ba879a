"""A driver for test_ray: grade a file on a cluster through the library API and `ray.kill` one
engine actor at the first result, while it holds records. Prints what happened as JSON.

A separate process because Ray reads its auth settings once, at import: the test process must not
carry a Ray connection configured for one cluster into the next test.
"""

import json
import sys

import ray

from prom_local.backends.ray.driver import JudgeSpec, RayScorer
from prom_local.engine import EngineConfig, SamplingParams


def main(address: str, model: str, src: str, out: str) -> None:
    spec = JudgeSpec(model=model, engine=EngineConfig(n_ctx=1024, gpu_layers=0, n_threads=1, n_parallel=2),
                     sampling=SamplingParams(max_tokens=6))
    killed = []
    with RayScorer(spec, address=address) as scorer:
        scorer.start()

        def on_result(grade, stats):
            if not killed:
                victim = max(scorer.actors, key=lambda a: len(a.inflight))
                killed.append((victim, len(victim.inflight)))
                ray.kill(victim.handle, no_restart=True)

        run = scorer.score_file(src, out, on_result=on_result)
    victim, held = killed[0]
    print(json.dumps({
        "nodes": sorted(a.node_name for a in run.actors),
        "paths": sorted(run.model["paths"].values()),
        "code": [a.info["code"] for a in run.actors],
        "killed": {"node": victim.node_name, "held": held, "lost": victim.lost},
        "requeued": run.requeued,
        "graded": {a.node_name: a.graded for a in run.actors},
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
