"""`tokenmill serve --ray`: connect to (or start) a Ray cluster, deploy the app, serve until
SIGINT / SIGTERM."""
import dataclasses
import signal
import threading


def serve_on_ray(args, config, settings) -> int:
    import ray
    from ray import serve

    from .app import build_app
    address = args.address if args.address not in (None, "", "local") else None
    ray.init(address=address, include_dashboard=False, log_to_driver=True, ignore_reinit_error=True)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    engine = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("show_progress", "num_threads")}
    server = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("host", "port")}
    spec = {"engine": engine, "server": server, "num_cpus": args.ray_num_cpus, "num_gpus": args.ray_num_gpus,
            "ingress_replicas": args.ingress_replicas}
    if settings.models or settings.named_models:  # a store: one engine deployment per model
        from ..server.app import build_store, served_name
        store = build_store(config, settings, served_name(config, settings))
        spec["models"] = {m.name: m.path for m in store.list()}
    if args.autoscale:
        spec["autoscale"] = args.autoscale
    else:
        spec["replicas"] = args.replicas
    serve.run(build_app(spec), name="tokenmill", route_prefix="/")
    print(f"tokenmill: serving on Ray Serve at http://{settings.host}:{settings.port} "
          f"({'autoscale ' + args.autoscale if args.autoscale else f'{args.replicas} replicas'}, "
          f"{args.ray_num_cpus} CPUs each)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *a: stop.set())
    stop.wait()
    if address is None:
        ray.shutdown()  # our own local instance: every replica goes with it
    else:
        serve.delete("tokenmill", _blocking=False)  # a shared cluster: remove our app, leave the rest
    return 0
