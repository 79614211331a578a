"""`tokenmill` command line. Engine flags are generated from EngineConfig and sampling flags
from SamplingParams, one flag per field, so the CLI cannot drift from the dataclasses."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
import threading
import types
import typing

from .config import EngineConfig

# fields that are not useful as flags
_SKIP = {"show_progress", "model", "named_models", "skip_special_tokens", "logits_processors", "return_raw_logits",
         "price_in", "price_out"}


def _flag_type(hint):
    """Map a dataclass field type to (argparse kwargs)."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:  # X | None
        return _flag_type(args[0])
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is list:
        return {"action": "append", "type": args[0]}
    if origin is dict:
        return {"type": json.loads, "help": "JSON object"}
    return {"type": hint}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, overrides: dict | None = None) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in _SKIP:
            continue
        kwargs = _flag_type(hints[f.name])
        kwargs["dest"] = f.name
        kwargs["default"] = (overrides or {}).get(f.name, argparse.SUPPRESS)
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _pick(args: argparse.Namespace, cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def _engine_parser(several: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if several:  # serve: the default model, and more by name (the model store)
        p.add_argument("--model", "-m", action="append", default=None,
                       help="a .gguf file or a Hugging Face model directory (default: bundled SmolLM2-135M-"
                       "Instruct); NAME=PATH (repeatable) adds a model to the store under NAME")
    else:
        p.add_argument("--model", "-m", default=None,
                       help="a .gguf file or a Hugging Face model directory (default: bundled SmolLM2-135M-Instruct)")
    g = p.add_argument_group("engine")
    add_dataclass_flags(g, EngineConfig)
    return p


def _sampling_parser(**defaults) -> argparse.ArgumentParser:
    from .sampling_params import SamplingParams
    p = argparse.ArgumentParser(add_help=False)
    add_dataclass_flags(p.add_argument_group("sampling"), SamplingParams, defaults)
    return p


def _make_llm(args):
    from .llm import LLM
    return LLM(**_pick(args, EngineConfig))


def cmd_generate(args) -> int:
    from .sampling_params import SamplingParams
    params = SamplingParams(**_pick(args, SamplingParams))
    llm = _make_llm(args)
    if params.n == 1 and not args.no_stream:
        for piece in llm.stream(args.prompt, params):
            print(piece, end="", flush=True)
        print()
        return 0
    out = llm.generate(args.prompt, params)[0]
    for c in out.outputs:
        if params.n > 1:
            print(f"--- sample {c.index} ({c.finish_reason})")
        print(c.text)
    return 0


def cmd_chat(args) -> int:
    from .model.loader.sampling_defaults import recommended
    from .sampling_params import SamplingParams
    llm = _make_llm(args)
    # the model's recommended sampling, under whatever the user gave on the command line
    rec, source = recommended(llm.engine.model_path)
    params = SamplingParams(**{**rec, **_pick(args, SamplingParams)})
    print("sampling: " + ", ".join(f"{k} {getattr(params, k)}" for k in rec) + f" (from {source})",
          file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"tokenmill chat with {llm.engine.model_name}. /reset clears the conversation, /quit leaves.")
    while True:
        try:
            line = input(">>> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit", "/bye"):
            return 0
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)")
            continue
        history.append({"role": "user", "content": text})
        pieces = []
        try:
            for piece in llm.chat_stream(history, params):
                pieces.append(piece)
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" [interrupted]", end="")
        except ValueError as e:  # e.g. the conversation outgrew the context
            history.pop()
            print(f"error: {e}", file=sys.stderr)
            continue
        print()
        history.append({"role": "assistant", "content": "".join(pieces)})


def _serve_replicas(args, argv: list[str]) -> int:
    """`serve --replicas N`: N engine processes on the next ports, threads split between them,
    and a router in front on --port."""
    import subprocess
    import uvicorn

    from .router.app import create_router_app
    n = args.replicas
    threads = max(1, (getattr(args, "num_threads", None) or os.cpu_count() or 1) // n)
    # the replicas get every flag but the router's own; the API key is checked at the router
    drop = {"--replicas", "--port", "--host", "--api-key", "--num-threads"} | {
        a.option_strings[0] for a in _router_actions()}
    keep, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in drop:
            skip = "=" not in tok and name not in ("--no-cache",)
            continue
        keep.append(tok)
    ports = [args.port + 1 + i for i in range(n)]

    def start(port):
        return subprocess.Popen([sys.executable, "-m", "tokenmill.cli", *keep, "--port", str(port),
                                 "--num-threads", str(threads), "--log-level", "warning"],
                                preexec_fn=_die_with_parent)

    procs = [start(p) for p in ports]
    stopping = threading.Event()

    def supervise():
        """A replica that exits (its engine failed, it was killed) is started again; the
        router's health checks take it out meanwhile and back in once it is ready."""
        while not stopping.wait(0.5):
            for i, p in enumerate(procs):
                if p.poll() is not None and not stopping.is_set():
                    print(f"tokenmill: replica on port {ports[i]} exited with code {p.returncode}; "
                          f"restarting it", flush=True)
                    procs[i] = start(ports[i])

    threading.Thread(target=supervise, name="tokenmill-supervisor", daemon=True).start()

    def stop_replicas(*_):
        stopping.set()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    # uvicorn re-raises SIGTERM/SIGINT after its own shutdown; end the replicas then too
    signal.signal(signal.SIGTERM, lambda *a: (stop_replicas(), sys.exit(0)))
    args.backend = [f"http://127.0.0.1:{p}" for p in ports]
    args.route, args.route_model, args.route_key = None, None, None
    args.api_key_pairs = [("default", args.api_key)] if args.api_key else []  # one bare key, any characters
    args.api_key = None
    try:
        cfg = router_config(args)
        print(f"tokenmill: {n} replicas ({threads} threads each) on ports {ports[0]}-{ports[-1]}, "
              f"router on http://{args.host}:{args.port}", flush=True)
        uvicorn.run(create_router_app(cfg), host=args.host, port=args.port, log_level=args.log_level)
    finally:
        stop_replicas()
    return 0


def _die_with_parent():
    """Replica processes get SIGTERM if the `serve --replicas` process dies (Linux)."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _router_actions():
    p = argparse.ArgumentParser(add_help=False)
    _add_router_flags(p, with_backends=False)
    return [a for a in p._actions if a.option_strings]


def cmd_estimate(args) -> int:
    from .estimate import estimate, format_table, load_shape, measure_bandwidth
    shape = load_shape(args.model, args.params)
    e = estimate(shape, args.context, args.concurrency, None if args.no_measure else measure_bandwidth())
    print(json.dumps(e, indent=2) if args.json else format_table(e))
    return 0


def _split_models(args) -> None:
    """serve's --model list -> args.model (the default model's path, or None: bundled),
    args.named_models (NAME=PATH) and, when only named models are given, the first one's name
    as the served name."""
    items = args.model or []
    plain = [i for i in items if "=" not in i or os.path.exists(os.path.expanduser(i))]
    named = [i for i in items if i not in plain]
    if len(plain) > 1:
        raise ValueError("give one --model PATH (the default model); name the others: --model NAME=PATH")
    if not plain and named and not args.models:
        name, _, path = named[0].partition("=")
        plain = [path]
        if not getattr(args, "served_model_name", None):
            args.served_model_name = name
        named = named[1:]
    args.model = plain[0] if plain else None
    args.named_models = named or None


def cmd_serve(args) -> int:
    import uvicorn

    _split_models(args)

    if args.ray:
        from .cluster.launch import serve_on_ray
        from .server.serving import ServerSettings
        settings = ServerSettings(**_pick(args, ServerSettings))
        settings.price_in, settings.price_out = _server_price(args.price)
        return serve_on_ray(args, EngineConfig(**_pick(args, EngineConfig)), settings)
    if args.replicas > 1:
        return _serve_replicas(args, sys.argv[1:] if args.argv is None else args.argv)

    from .server.app import create_app
    from .server.serving import ServerSettings
    config = EngineConfig(**_pick(args, EngineConfig))
    settings = ServerSettings(**_pick(args, ServerSettings))
    settings.price_in, settings.price_out = _server_price(args.price)
    app = create_app(config, settings)
    name = app.state.tm.model_name
    base = f"http://{settings.host}:{settings.port}"
    if settings.api_key is not None and not settings.api_key.strip():
        raise SystemExit("tokenmill serve: --api-key is empty (an empty key would let in every request)")
    auth = " -H \"Authorization: Bearer $KEY\"" if settings.api_key else ""  # never the key itself
    store = app.state.tm.pool.store
    names = store.paths()
    if len(names) > 1:
        print(f"tokenmill: model store {store.directory}: {len(names)} models ({', '.join(list(names)[:8])}"
              f"{', ...' if len(names) > 8 else ''}); each loads when a request names it", flush=True)
    print(f"tokenmill: serving {name} on {base} (OpenAI /v1, Ollama /api, TGI /generate); "
          f"the model loads in the background, GET {base}/health says when it is ready.\n"
          f"  curl {base}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", "
          f"\"content\": \"What is the capital of France?\"}}], \"temperature\": 0}}'", flush=True)
    from .server.lifecycle import ServingProcess
    process = ServingProcess(app, uvicorn.Config(app, host=settings.host, port=settings.port,
                                                 log_level=args.log_level, timeout_graceful_shutdown=5))
    process.run()
    return app.state.tm.exit_code


def _server_price(values: list[str] | None) -> tuple[float, float]:
    """`serve --price IN,OUT`: dollars per million prompt / generated tokens."""
    for v in values or []:
        text = v.split("=", 1)[1] if "=" in v else v
        try:
            pin, pout = (float(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"--price takes IN,OUT (dollars per million tokens), got {v!r}") from None
        return pin, pout
    return 0.0, 0.0


def _pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out = {}
    for v in values or []:
        if "=" not in v:
            raise ValueError(f"{flag} takes NAME=VALUE, got {v!r}")
        k, val = v.split("=", 1)
        out[k] = val
    return out


def router_config(args):
    from .router.config import ClassifierConfig, RouteConfig, RouterConfig
    urls: dict[str, list[str]] = {}
    for name, url in ((n, u) for n, u in (r.split("=", 1) if "=" in r else (None, r)
                                          for r in args.route or [])):
        if name is None:
            raise ValueError(f"--route takes NAME=URL, got {url!r}")
        urls.setdefault(name, []).append(url)
    if args.backend:
        urls.setdefault("default", []).extend(args.backend)
    models, keys = _pairs(args.route_model, "--route-model"), _pairs(args.route_key, "--route-key")
    prices = {}
    bare = [v for v in args.price or [] if "=" not in v]  # IN,OUT alone: the default route
    for name, v in _pairs([v for v in args.price or [] if "=" in v] + [f"default={v}" for v in bare],
                          "--price").items():
        try:
            pin, pout = (float(x) for x in v.split(","))
        except ValueError:
            raise ValueError(f"--price takes NAME=IN,OUT (dollars per million tokens), got {v!r}") from None
        prices[name] = (pin, pout)
    routes = [RouteConfig(n, u, models.get(n), keys.get(n), *prices.get(n, (0.0, 0.0))) for n, u in urls.items()]
    from .api.auth import parse_key_spec, read_key_file
    pairs = [parse_key_spec(k) for k in args.api_key or []] + list(getattr(args, "api_key_pairs", []))
    if getattr(args, "api_key_file", None):
        pairs += read_key_file(args.api_key_file)
    api_keys = {key: name for name, key in pairs}
    if any(not k.strip() for k in args.admin_key or []):
        raise ValueError("--admin-key: empty keys are refused")
    return RouterConfig(
        routes=routes, policy=args.policy, health_interval_s=args.health_interval,
        max_queue=args.max_queue, max_outstanding=args.max_outstanding, cache_url=args.cache_url,
        cache_ttl_s=args.cache_ttl, cache_max_entries=args.cache_max_entries, cache_enabled=not args.no_cache,
        cache_max_bytes=args.cache_max_bytes,
        ledger_path=args.ledger, api_keys=api_keys, admin_keys=set(args.admin_key or []), rate_limit_rpm=args.rate_limit_rpm,
        rate_limit_tpm=args.rate_limit_tpm, max_retries=args.max_retries,
        classifier=ClassifierConfig(large_threshold=args.large_threshold))


def _add_router_flags(p: argparse.ArgumentParser, with_backends: bool = True) -> None:
    g = p.add_argument_group("router")
    if with_backends:
        g.add_argument("--backend", action="append", help="model server URL (repeatable): route `default`")
        g.add_argument("--route", action="append", help="NAME=URL (repeatable): hybrid routing, e.g. "
                       "small=http://127.0.0.1:8001 large=https://api.example.com")
        g.add_argument("--route-model", action="append", help="NAME=MODEL: model name sent upstream")
        g.add_argument("--route-key", action="append", help="NAME=ENVVAR: upstream API key from the environment")
    g.add_argument("--price", action="append", help="[ROUTE=]IN,OUT dollars per million prompt/completion "
                   "tokens (no ROUTE: the default route, or this server)")
    g.add_argument("--admin-key", action="append", dest="admin_key", help="KEY that may also see the "
                   "per-key figures on the dashboard (repeatable)")
    g.add_argument("--policy", default="least_outstanding",
                   choices=["least_outstanding", "prefix_affinity", "round_robin"])
    g.add_argument("--cache-url", default=None, help="redis://host:port/db to share the response cache")
    g.add_argument("--no-cache", action="store_true", help="turn the response cache off")
    g.add_argument("--cache-ttl", type=float, default=3600.0)
    g.add_argument("--cache-max-entries", type=int, default=10000)
    g.add_argument("--cache-max-bytes", type=int, default=256 * 2**20, help="the in-memory cache's size in bytes")
    g.add_argument("--ledger", default="tokenmill-usage.sqlite", help="SQLite file of the cost ledger")
    g.add_argument("--rate-limit-rpm", type=int, default=None, help="per key requests per minute")
    g.add_argument("--rate-limit-tpm", type=int, default=None, help="per key tokens per minute")
    g.add_argument("--health-interval", type=float, default=2.0)
    g.add_argument("--max-outstanding", type=int, default=256)
    g.add_argument("--router-max-queue", dest="max_queue", type=int, default=512)
    g.add_argument("--max-retries", type=int, default=2)
    g.add_argument("--large-threshold", type=float, default=3.0, help="classifier score that goes large")


def cmd_router(args) -> int:
    import uvicorn

    from .router.app import create_router_app
    cfg = router_config(args)
    app = create_router_app(cfg)
    print(f"tokenmill router on http://{args.host}:{args.port} -> "
          + "; ".join(f"{r.name}: {', '.join(r.urls)}" for r in cfg.routes), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_usage(args) -> int:
    from .router.ledger import usage_report
    if not os.path.exists(args.ledger):
        raise FileNotFoundError(f"no ledger at {args.ledger}")
    rows = usage_report(args.ledger, args.by)
    print(f"{args.by:<24} {'requests':>9} {'cached':>7} {'prompt tok':>11} {'compl tok':>10} {'cost $':>10}")
    for group, n, hits, p, c, cost in rows:
        print(f"{str(group):<24} {n:>9} {hits or 0:>7} {p or 0:>11} {c or 0:>10} {cost or 0:>10.6f}")
    return 0


def _read_ahead(argv: list[str]) -> None:
    """Ask the kernel to start reading a --model GGUF file into the page cache now, while Python
    imports torch (~2 s): loading then finds its pages in memory (model/loader/gguf.py)."""
    path = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--model"), None)
    path = path or next((a.split("=", 1)[1] for a in argv if a.startswith("--model=")), None)
    if not path or not path.endswith(".gguf") or not os.path.isfile(path) or not hasattr(os, "posix_fadvise"):
        return

    def hint():
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)
        except OSError:
            pass
    threading.Thread(target=hint, name="tokenmill-readahead", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    _read_ahead(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tokenmill", description="Run and serve language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="complete one prompt",
                       parents=[_engine_parser(), _sampling_parser(max_tokens=256)])
    g.add_argument("prompt")
    g.add_argument("--no-stream", action="store_true", help="print the result at the end")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat (streams tokens)",
                       parents=[_engine_parser(),
                                _sampling_parser(max_tokens=512)])
    c.add_argument("--system", default=None, help="system prompt")
    c.set_defaults(func=cmd_chat)

    from .server.serving import ServerSettings
    s = sub.add_parser("serve", help="HTTP server: OpenAI, Anthropic, Ollama and TGI APIs",
                       parents=[_engine_parser(several=True)])
    add_dataclass_flags(s.add_argument_group("server"), ServerSettings,
                        {f.name: f.default for f in dataclasses.fields(ServerSettings)})
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--replicas", type=int, default=1,
                   help="start N engine processes (threads split between them) behind a router; "
                   "with --ray: N Ray Serve replicas")
    ray = s.add_argument_group("Ray Serve (pip install 'tokenmill[ray]')")
    ray.add_argument("--ray", action="store_true", help="deploy the engine replicas on Ray Serve")
    ray.add_argument("--address", default=None, help="Ray cluster: auto, ray://HOST:PORT; none: a local one")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale replicas between MIN and MAX")
    ray.add_argument("--ray-num-cpus", type=float, default=1.0, help="CPUs per engine replica (its torch threads)")
    ray.add_argument("--ray-num-gpus", type=float, default=0.0, help="GPUs per engine replica")
    ray.add_argument("--ingress-replicas", type=int, default=1, help="ingress (HTTP) replicas")
    _add_router_flags(s, with_backends=False)
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("router", help="OpenAI-compatible gateway in front of model servers")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8000)
    r.add_argument("--api-key", action="append", dest="api_key",
                   help="NAME=KEY (split on the first '='; or a bare KEY without '=') accepted at the "
                   "router (repeatable); none: open")
    r.add_argument("--api-key-file", help="file with one `name key` per line (keys may hold any character)")
    r.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    _add_router_flags(r)
    r.set_defaults(func=cmd_router)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    from .benchmark import serve as bench_serve
    bench_serve.add_parser(bsub)

    e = sub.add_parser("eval", help="model quality evaluations")
    esub = e.add_subparsers(dest="eval_command", required=True)
    from .benchmark import perplexity as eval_perplexity
    eval_perplexity.add_parser(esub)

    est = sub.add_parser("estimate", help="memory and decode speed of a model in each weight format")
    est.add_argument("model", nargs="?", default=None, help="GGUF file or HF directory (default: the bundled model)")
    est.add_argument("--params", default=None, help="a bare parameter count (7B, 135M): a typical shape is assumed")
    est.add_argument("--context", type=int, default=4096, help="tokens of context per sequence")
    est.add_argument("--concurrency", type=int, default=1, help="sequences at once")
    est.add_argument("--no-measure", action="store_true", help="skip measuring memory bandwidth")
    est.add_argument("--json", action="store_true", help="print JSON instead of a table")
    est.set_defaults(func=cmd_estimate)

    from .store import cli as store_cli
    store_cli.add_parsers(sub)

    u = sub.add_parser("usage", help="cost and tokens per key / route / day from the router's ledger")
    u.add_argument("--ledger", default="tokenmill-usage.sqlite")
    u.add_argument("--by", default="key", choices=["key", "route", "day", "model"])
    u.set_defaults(func=cmd_usage)

    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tokenmill: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
