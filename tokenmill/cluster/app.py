"""The Ray Serve application: an ingress deployment in front of engine replicas.

`build_app(args)` is the application builder (`import_path: tokenmill.cluster.app:build_app`
in a Serve config or a KubeRay RayService); `tokenmill serve --ray` calls it too. args:
  engine:  EngineConfig fields (model, max_model_len, kv_cache_memory_gib, ...)
  models:  {name: path}: one engine deployment per model (a store); model_options: {name: {...}}
    that model's replicas / autoscale / num_cpus
  server:  ServerSettings fields (api_key, max_queue, price_in, ...)
  replicas: N  or  autoscale: "MIN:MAX" (or a Serve autoscaling_config dict)
  num_cpus, num_gpus, resources: per engine replica (torch threads = num_cpus)
  max_ongoing_requests: per replica (default: the engine's max_num_seqs, so that continuous
    batching is fed); ingress_replicas; max_imbalance (prefix affinity yields to load)
  router:  RouterConfig fields for the ingress (cache_url for a Redis response cache shared
    by ingress replicas, rate_limit_rpm / _tpm, admin_keys, extra_routes {name: URL} for
    hybrid routing, engine_retries, affinity_chars); app_name: the app's name (its ledger actor)
"""
from ray import serve
from ray.serve.config import RequestRouterConfig

from ..api.affinity import PREFIX_CHARS
from .replica import EngineReplica


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0})
@serve.ingress()
class Ingress:
    """The router (router/app.py) as the Serve ingress: its upstream is the engine deployment,
    reached through ServeTransport; state shared between ingress replicas lives in Redis
    (response cache, when cache_url is set) and in one ledger actor."""

    def __init__(self, engines: dict, router: dict):
        """engines: model name -> the handle of that model's engine deployment."""
        self.engines, self.router = engines, router

    def __serve_build_asgi_app__(self):
        from ..router.app import create_router_app
        from ..router.config import RouteConfig, RouterConfig
        from .ledger_actor import SharedLedger
        from .transport import ServeTransport, engine_url
        r = dict(self.router)
        urls = {engine_url(i): handle for i, handle in enumerate(self.engines.values())}
        # every model's deployment is a backend of the default route: the router sends each
        # request to the one whose /v1/models has its model
        routes = [RouteConfig("default", list(urls), price_in=r.pop("price_in", 0.0),
                              price_out=r.pop("price_out", 0.0))]
        for name, url in (r.pop("extra_routes", None) or {}).items():  # hybrid: e.g. large=https://...
            routes.append(RouteConfig(name, [url]))
        ledger = SharedLedger(r.get("ledger_path", "tokenmill-usage.sqlite"), r.pop("ledger_name"))
        retries, chars = int(r.pop("engine_retries", 2)), int(r.pop("affinity_chars", PREFIX_CHARS))
        transports = {url: ServeTransport(handle, retries, chars) for url, handle in urls.items()}
        # a call through a DeploymentHandle may wait for Serve to route it (a replica starting,
        # a busy controller): more time than a socket to answer /health
        cfg = RouterConfig(routes=routes, include_backend_metrics=True, max_retries=0,
                           health_timeout_s=float(r.pop("health_timeout_s", 15.0)), **r)
        app = create_router_app(cfg, transports=transports, ledger=ledger)
        return _named(app, serve.get_replica_context().replica_id.unique_id)


def _named(app, name: str):
    """Every answer says which ingress replica gave it (x-tokenmill-ingress)."""
    tag = (b"x-tokenmill-ingress", name.encode())

    async def named(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def tagged(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [tag])
            await send(message)
        await app(scope, receive, tagged)
    return named


def _autoscaling(spec) -> dict | None:
    if spec is None:
        return None
    if isinstance(spec, dict):
        return spec
    lo, hi = (int(x) for x in str(spec).split(":"))
    if not 0 <= lo <= hi or hi < 1:
        raise ValueError(f"autoscale takes MIN:MAX with 0 <= MIN <= MAX, MAX >= 1; got {spec!r}")
    return {"min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, 1), "target_ongoing_requests": 4}


def _engine_deployment(name: str, args: dict, engine_args: dict, server_args: dict):
    num_cpus = float(args.get("num_cpus", 1))
    autoscaling = _autoscaling(args.get("autoscale"))
    max_ongoing = int(args.get("max_ongoing_requests") or engine_args.get("max_num_seqs", 64))
    options = dict(
        name=name,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": float(args.get("num_gpus", 0)),
                           **({"resources": args["resources"]} if args.get("resources") else {})},
        max_ongoing_requests=max_ongoing,
        request_router_config=RequestRouterConfig(
            request_router_class="tokenmill.cluster.request_router:PrefixAffinityRouter",
            request_router_kwargs={"max_imbalance": int(args.get("max_imbalance", 4))},
            request_routing_stats_period_s=1.0),
        health_check_period_s=float(args.get("health_check_period_s", 5)),
    )
    if autoscaling:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = int(args.get("replicas", 1))
    return serve.deployment(EngineReplica).options(**options).bind(engine_args, server_args, max(1, int(num_cpus)))


def build_app(args: dict):
    """models: {name: path} of a store: one engine deployment per model (the first is named
    `engine`, the others `engine-1`, ...), each with its own replicas or autoscaling (per model
    in model_options: {name: {replicas, autoscale, num_cpus, ...}}); else the one model of
    engine.model."""
    engine_args = dict(args.get("engine") or {})
    server_args = {k: v for k, v in (args.get("server") or {}).items() if k not in ("models", "named_models")}
    models = dict(args.get("models") or {})
    engines = {}
    if not models:
        engines[server_args.get("served_model_name") or "default"] = \
            _engine_deployment("engine", args, engine_args, server_args)
    for i, (name, path) in enumerate(models.items()):
        own = {**args, **((args.get("model_options") or {}).get(name) or {})}
        engines[name] = _engine_deployment("engine" if i == 0 else f"engine-{i}", own,
                                           dict(engine_args, model=path), dict(server_args, served_model_name=name))
    server = dict(server_args)
    key = server_args.get("api_key")
    router = {"api_keys": {key: "default"} if key else {}, "price_in": server.get("price_in", 0.0),
              "price_out": server.get("price_out", 0.0), "health_interval_s": 1.0,
              "ledger_name": "tokenmill-ledger-" + str(args.get("app_name", "tokenmill")),
              **(args.get("router") or {})}
    if "admin_keys" in router:
        router["admin_keys"] = set(router["admin_keys"])
    return Ingress.options(num_replicas=int(args.get("ingress_replicas", 1)),
                           max_ongoing_requests=int(args.get("ingress_max_ongoing", 1000))).bind(engines, router)
