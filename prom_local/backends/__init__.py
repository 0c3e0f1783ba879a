"""Where records are graded, each a judging.backend.Backend, and the one place that picks one:

  remote.py        RemoteJudge: a `prom-local serve` over HTTP (POST /v1/grade), `--server`
  ray/             RayScorer: the llama.cpp engines of a Ray cluster, `--ray` (an optional extra)
  choose.py        open_backend: the server, the Ray engines, else the local Judge (judging/judge.py)
  batch_client.py  the client of the server's Batch API, for `prom-local batch`

Above runs/: the Ray driver writes through runs.score_file and its ResultsSink; runs/ itself takes
any Backend and imports none of these.
"""
