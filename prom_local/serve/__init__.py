"""`prom-local serve`: the judge as an HTTP service that OpenAI clients already speak.

A shell like cli/ and tui/: it turns HTTP into Judge and engine calls and back, and holds no
scheduling or scoring logic of its own. Every request, from every endpoint, becomes sequences of the
one shared engine (`engine.submit`), decoded together with everyone else's.

  service.py      configuration, the engine + Judge, checks (authenticate, body, readiness), the bounded queue
  app.py          the Starlette app: routes, background model load
  door.py         what every HTTP request needs once (key, bounded body, parsing, 499/500, metrics) before its core
  cores.py        where a core runs: LocalCores on this process's engine (cluster/: on a Ray cluster's, `--ray`)
  schema.py       the OpenAI chat request, validated
  chat.py         messages -> tokens (plain text), grading detection, sampling, logprobs, stop strings
  completions.py  POST /v1/chat/completions, whole or SSE (its core is what a chat batch line calls)
  grade.py        POST /v1/grade: records in, `score` rows out (its core is what a grade batch line calls)
  bridge.py       engine handles -> asyncio; admission
  metrics.py      GET /metrics (Prometheus text format)
  errors.py       OpenAI's error shape
  auth.py         API keys (named, from --api-key-file), Host names answered to
  guard.py        Host / Origin / Content-Type checks before any route (browsers, DNS rebinding)
  limits.py       every bound on client values; JSON parsed safely (depth, list length, big ints, surrogates)
  protocol.py     uvicorn's h11 protocol: a bound on connections, a deadline for a request's head
  batches/        OpenAI's Batch API: uploads, the store, the runner
  cluster/        `serve --ray`: the front's engines are a Ray cluster's (imported only with --ray)
"""

from .app import create_app
from .service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "create_app"]
