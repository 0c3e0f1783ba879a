"""`prom-local serve`: the judge as an HTTP service that OpenAI clients already speak.

A shell like cli/ and tui/: it turns HTTP into Judge and engine calls and back, and holds no
scheduling or scoring logic of its own. Every request, from every endpoint, becomes sequences of the
one shared engine (`engine.submit`), decoded together with everyone else's.

  service.py      configuration, the engine + Judge, checks (authenticate, body, readiness), the bounded queue
  app.py          the Starlette app: routes, error shape, background model load
  schema.py       the OpenAI chat request, validated
  chat.py         messages -> tokens (plain text), grading detection, sampling, logprobs, stop strings
  completions.py  POST /v1/chat/completions, whole or SSE
  grade.py        POST /v1/grade: records in, `score` rows out
  bridge.py       engine handles -> asyncio; admission
  metrics.py      GET /metrics (Prometheus text format)
  errors.py       OpenAI's error shape
  auth.py         API keys (named, from --api-key-file), Host names answered to
  guard.py        Host / Origin / Content-Type checks before any route (browsers, DNS rebinding)
  limits.py       bounds on client values; JSON parsed safely (depth, big ints, surrogates), off the loop
  protocol.py     uvicorn's h11 protocol with a deadline for a request's head
"""

from .app import create_app
from .service import ServeConfig, Service

__all__ = ["ServeConfig", "Service", "create_app"]
