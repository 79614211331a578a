"""`tokenmill` command line. Engine flags are generated from EngineConfig and sampling flags
from SamplingParams, one flag per field, so the CLI cannot drift from the dataclasses."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from .config import EngineConfig
from .sampling_params import SamplingParams

# fields that are not useful as flags
_SKIP = {"show_progress", "model", "skip_special_tokens"}


def _flag_type(hint):
    """Map a dataclass field type to (argparse kwargs)."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
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


def _engine_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", "-m", default=None,
                   help="a .gguf file or a Hugging Face model directory (default: bundled SmolLM2-135M-Instruct)")
    g = p.add_argument_group("engine")
    add_dataclass_flags(g, EngineConfig)
    return p


def _sampling_parser(**defaults) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    add_dataclass_flags(p.add_argument_group("sampling"), SamplingParams, defaults)
    return p


def _make_llm(args):
    from .llm import LLM
    return LLM(**_pick(args, EngineConfig))


def cmd_generate(args) -> int:
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
    params = SamplingParams(**_pick(args, SamplingParams))
    llm = _make_llm(args)
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


def cmd_serve(args) -> int:
    import uvicorn

    from .server.app import create_app
    from .server.serving import ServerSettings
    config = EngineConfig(**_pick(args, EngineConfig))
    settings = ServerSettings(**_pick(args, ServerSettings))
    app = create_app(config, settings)
    name = app.state.tm.model_name
    base = f"http://{settings.host}:{settings.port}"
    auth = f" -H 'Authorization: Bearer {settings.api_key}'" if settings.api_key else ""
    print(f"tokenmill: serving {name} on {base} (OpenAI /v1, Ollama /api, TGI /generate); "
          f"the model loads in the background, GET {base}/health says when it is ready.\n"
          f"  curl {base}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", "
          f"\"content\": \"What is the capital of France?\"}}]}}'", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill", description="Run and serve language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="complete one prompt",
                       parents=[_engine_parser(), _sampling_parser(max_tokens=256)])
    g.add_argument("prompt")
    g.add_argument("--no-stream", action="store_true", help="print the result at the end")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat (streams tokens)",
                       parents=[_engine_parser(),
                                _sampling_parser(max_tokens=512, temperature=0.2, top_p=0.9)])
    c.add_argument("--system", default=None, help="system prompt")
    c.set_defaults(func=cmd_chat)

    from .server.serving import ServerSettings
    s = sub.add_parser("serve", help="HTTP server: OpenAI, Ollama and TGI APIs",
                       parents=[_engine_parser()])
    add_dataclass_flags(s.add_argument_group("server"), ServerSettings,
                        {f.name: f.default for f in dataclasses.fields(ServerSettings)})
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=cmd_serve)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"tokenmill: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
