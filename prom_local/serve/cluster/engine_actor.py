"""One engine of `serve --ray`, inside a Ray actor: the serve cores on a Service of its own.

Ray runs this class as an async actor (its methods share the actor's event loop, as requests share
serve's), created by pool.py with `max_restarts`: when the process dies (llama.cpp crashed, SIGKILL,
node lost) Ray starts it again, which runs __init__ again, so the replacement resolves, checks and
loads the model by itself. Answers travel as plain data (status, body), never as exceptions, so
the front re-raises the very ApiError a local server would answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from ...backends.ray.worker import node_info, prepare_model
from ...errors import ClusterError
from ..cores import LocalCores
from ..errors import ApiError, ClientGone
from ..service import ServeConfig, Service


class ServeEngine:
    def __init__(self, spec: str | None, models_dir: str | None, config: ServeConfig):
        model = prepare_model(spec, models_dir, allow_pull=True)
        if "error" in model:
            raise ClusterError(f"{model['error']}: {model['message']}")
        if "manifest_sha256" in model:
            raise ClusterError(f"{model['path']} has sha256 {model['sha256']}, but its manifest says "
                               f"{model['manifest_sha256']}: pull or copy it again")
        # Keys, bounds of the HTTP layer and the Batch API are the front's: this Service grades only.
        # The front may not hold the file: the name and profile it did not know are the file's
        # (front.py's ClusterService.load names the model the same way).
        path = Path(model["path"])
        config = dataclasses.replace(config, model_path=path, api_keys={}, batches=None,
                                     model_name=config.model_name or path.name.removesuffix(".gguf"),
                                     profile=config.profile or model["profile"])
        self.service = Service(config)
        self.service.load()
        if self.service.load_error is not None:
            raise self.service.load_error
        self.service.cores = self.cores = LocalCores()
        self.model = model
        self.node = node_info()
        self._gone: dict[str, asyncio.Event] = {}

    def info(self) -> dict:
        """Where this engine runs, which file it loaded, and what it offers."""
        return {**self.service.describe(), **self.node, "file": self.model}

    def status(self) -> dict:
        """What the front shows in /health and /metrics: sequences busy, tokens so far."""
        snap = self.service.judge.snapshot()
        m = self.service.metrics
        return {"snapshot": snap, "busy": snap["busy"], "admitted": self.service.admission.admitted,
                "prompt_tokens": m.prompt_tokens, "reused_tokens": m.reused_tokens,
                "generated_tokens": m.generated_tokens, "cancelled": m.cancelled, "pid": self.node["pid"]}

    def cancel(self, rid: str) -> None:
        """The caller left (client hung up, batch cancelled): end that request's sequences."""
        event = self._gone.get(rid)
        if event is not None:
            event.set()

    async def grade(self, rid: str, caller: str, body: object, samples: int | None) -> tuple:
        return await self._answer(rid, lambda gone: self.cores.grade(
            self.service, caller, body, samples=samples, gone=gone))

    async def chat(self, rid: str, caller: str, body: object) -> tuple:
        return await self._answer(rid, lambda gone: self.cores.chat(
            self.service, caller, body, gone=gone, stream=False))

    async def chat_stream(self, rid: str, caller: str, body: object):
        """("error", status, body, headers) once, or ("data", text) per server-sent event."""
        from .. import completions

        gone = self._gone[rid] = asyncio.Event()
        try:
            try:
                call = await completions.prepare(self.service, caller, body)
            except ApiError as exc:
                yield ("error", exc.status, exc.body(), exc.headers)
                return
            async for data in completions.chunks(call):
                if gone.is_set():
                    return   # chunks' own cleanup cancels the sequences
                yield ("data", data)
        finally:
            self._gone.pop(rid, None)

    async def _answer(self, rid: str, core) -> tuple:
        gone = self._gone[rid] = asyncio.Event()
        try:
            return ("ok", await core(gone.wait))
        except ApiError as exc:
            return ("error", exc.status, exc.body(), exc.headers)
        except ClientGone:
            return ("gone",)
        finally:
            self._gone.pop(rid, None)
