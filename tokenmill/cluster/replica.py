"""The engine replica: one Ray Serve replica holding one engine and the whole tokenmill server
app (OpenAI, Ollama, TGI, pages, /metrics), answering HTTP requests handed over by the
ingress. Every answer carries `x-tokenmill-replica`, so a client (and the tests) can see
where a request ran."""
from __future__ import annotations

import os


class EngineReplica:
    def __init__(self, engine_args: dict, server_args: dict, num_threads: int | None = None):
        import torch
        from ..config import EngineConfig
        from ..engine.async_engine import AsyncLLMEngine
        from ..server.app import create_app
        from ..server.serving import ServerSettings
        # Ray sets OMP_NUM_THREADS to the actor's num_cpus; set torch's own count explicitly
        threads = num_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or 1
        torch.set_num_threads(threads)
        config = EngineConfig(**dict(engine_args, num_threads=threads, show_progress=False))
        settings = ServerSettings(**{k: v for k, v in server_args.items()
                                     if k not in ("host", "port", "api_key", "models", "named_models")})
        engine = AsyncLLMEngine.from_config(config, settings.max_queue)
        self.app = create_app(config, settings, engine=engine, scan_store=False)  # its one model
        self.name = _replica_name()
        self._lifespan = None

    async def _started(self):
        if self._lifespan is None:  # the app's own start-up (engine watcher, dashboard feed)
            self._lifespan = self.app.router.lifespan_context(self.app)
            await self._lifespan.__aenter__()

    async def stream(self, method: str, path: str, query: bytes, headers: list, body: bytes, affinity=None):
        """Yields ("start", status, headers), then ("body", bytes) chunks."""
        from .asgi_bridge import call_asgi
        await self._started()
        async for message in call_asgi(self.app, method, path, query, headers, body):
            if message[0] == "start":
                message = ("start", message[1], message[2] + [("x-tokenmill-replica", self.name)])
            yield message

    async def call(self, method: str, path: str, query: bytes, headers: list, body: bytes, affinity=None):
        """The whole answer at once: (status, headers, body)."""
        status, out_headers, chunks = 500, [], []
        async for message in self.stream(method, path, query, headers, body):
            if message[0] == "start":
                status, out_headers = message[1], message[2]
            else:
                chunks.append(message[1])
        return status, out_headers, b"".join(chunks)

    def check_health(self):
        """Ray Serve calls this periodically; an engine that died makes the replica unhealthy
        so that Serve replaces it."""
        state = self.app.state.tm
        if state.engine_error:
            raise RuntimeError(state.engine_error)


def _replica_name() -> str:
    try:
        from ray import serve
        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:  # outside Serve (unit use)
        return f"pid-{os.getpid()}"
