"""Errors in each client's own protocol shape and the exception handlers that the server and
the router share.

OpenAI: {"error": {"message", "type", "param", "code"}}; Ollama: {"error": "..."};
TGI: {"error": "...", "error_type": "..."}; Anthropic: {"type": "error", "error": {"type",
"message"}}. The shape is chosen by the route's path.
"""
from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
          503: "service_unavailable"}
TGI_PATHS = ("/", "/generate", "/generate_stream", "/info")
# Anthropic's error types by status (its SDK maps them to exception classes)
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 408: "timeout_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers


def refuse_fields(body, names) -> None:
    """A 400 naming the first of `names` that the body sets to anything but its neutral value
    (None, false, 0, empty): fields a protocol has that this server does not honour are refused
    by name, never silently ignored."""
    for name in names:
        if getattr(body, name, None) not in (None, False, [], "", {}):
            raise APIError(400, f"`{name}` is not supported by this server", param=name)


def _route_path(request) -> str:
    """The path the app routes on: without the prefix it is mounted under (a Ray Serve
    route_prefix), which request.url.path keeps."""
    path, root = request.url.path, request.scope.get("root_path") or ""
    return path[len(root):] if root and path.startswith(root) else path


def protocol_of(path: str) -> str:
    """Which protocol a path speaks: "ollama", "tgi", "anthropic" or "openai" (everything else)."""
    if path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    if path in TGI_PATHS:
        return "tgi"
    return "openai"


def is_streaming(path: str, body: dict) -> bool:
    """Whether the answer to this request body is a stream."""
    kind = protocol_of(path)
    if kind == "ollama":
        return body.get("stream", True) is not False  # Ollama streams unless told not to
    if kind == "tgi":
        return path == "/generate_stream" or (path == "/" and bool(body.get("stream")))
    return bool(body.get("stream"))


def error_body(path: str, status: int, message: str, param: str | None = None,
               code: str | None = None) -> dict:
    kind = protocol_of(path)
    if kind == "ollama":
        return {"error": message}
    if kind == "tgi":
        return {"error": message, "error_type": "validation" if status < 500 else "generation"}
    if kind == "anthropic":
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(path: str, status: int, message: str, param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, param, code), status_code=status, headers=headers)


def pydantic_message(errors: list[dict]) -> tuple[str, str | None]:
    """First validation error as (message, param) for a 400."""
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x not in ("body",)]
    param = ".".join(loc) or None
    if e.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if e.get("type") in ("json_invalid", "model_attributes_type") or param is None:
        return f"the request body is not valid JSON: {e.get('msg')}", None
    return f"{param}: {e.get('msg')}", param


def install_error_handlers(app: FastAPI, on_error=None) -> None:
    """Every error leaves in the protocol of the path it came to; nothing leaves as a bare 500.
    on_error(request, exc) is told about unexpected exceptions (logging)."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return error_response(_route_path(request), e.status, e.message, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        message, param = pydantic_message(e.errors())
        return error_response(_route_path(request), 400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = e.detail if e.status_code != 404 else f"no route {request.method} {request.url.path}"
        return error_response(_route_path(request), e.status_code, str(message))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        if on_error is not None:
            on_error(request, e)
        return error_response(_route_path(request), 500, f"internal error: {type(e).__name__}: {e}")
