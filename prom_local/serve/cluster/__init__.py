"""`prom-local serve --ray`: one HTTP service whose engines are a Ray cluster's.

The front (this process) keeps everything that is the service's: keys, TLS, bounds, the door, the
Batch API's store, /metrics. Its cores (serve/cores.py) are ClusterCores, which send each parsed
request or batch line to an engine actor; each engine actor runs the ordinary LocalCores on a
Service of its own, so a record is graded there exactly as `serve` grades it in-process.

  engine_actor.py  ServeEngine: one engine in a Ray actor (a Service without HTTP)
  pool.py          the front's view of the engines: choice (free slot, same instruction), health, faults
  front.py         ClusterService (the front's Service) and ClusterCores

Nothing here imports Ray at module level, and nothing imports this package without `--ray`.
"""
