"""The gate every request passes first: the caller's key, the body as it arrives, and the
request's total time.

It lives in its own module, not in ``api.py``, because Serve pickles the ingress class by
value: a dict at module level in ``api.py`` written from the replica's ``__init__`` would be
a copy the middleware never sees. Here ``configure`` is reached by reference.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from inference.serving.access import Refusal, Refused, caller

# Multipart overhead allowed beyond serving.max_upload_bytes in a request's body.
FORM_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class IngressRules:
    """What the gate checks on every request; set from the replica's config (one replica,
    one process, one set of rules)."""

    key_digests: frozenset[str]
    max_body_bytes: int
    body_timeout_s: float
    request_timeout_s: float


_rules: dict[str, IngressRules] = {}


def configure(rules: IngressRules) -> None:
    """Set the rules of this process's ingress (from its replica's ``__init__``)."""
    _rules["ingress"] = rules


class Gate:
    """Every request passes here first: the caller (``access.caller``), then the body as it
    arrives, then the request's total time.

    The body is counted as it is received, so a chunked upload (no Content-Length) is cut
    off at the limit with 413 rather than spooled in full; a declared length over it is
    refused before anything is read; a body still arriving after ``body_timeout_s`` gets
    408. A plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` turns a client that hangs up into a "No response returned" error
    logged with a traceback for every disconnect."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rules = _rules.get("ingress")
        if rules is None:  # fail closed: a gate without its rules lets nobody through
            await _refuse(Refusal(503, "the endpoint is starting; try again shortly"), scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        client = scope.get("client") or (None, None)
        try:
            owner = caller(rules.key_digests, _route(scope), client[0], headers.get("authorization"))
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > rules.max_body_bytes:
                raise Refused(Refusal(413, f"image: a body of {declared} bytes is over the limit of {rules.max_body_bytes}"))
        except Refused as refused:
            await _refuse(refused.refusal, scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = owner
        started = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, _BodyGuard(receive, rules), tracked_send), rules.request_timeout_s)
        except asyncio.TimeoutError:
            if not started:
                await _refuse(Refusal(504, f"the request took longer than {rules.request_timeout_s:g} s "
                                           "(serving.request_timeout_s)"), scope, receive, send)


class _BodyGuard:
    """``receive`` that counts the body's bytes and times its arrival: past either limit it
    raises an ``HTTPException``, which FastAPI's form parsing passes on to its handler."""

    def __init__(self, receive: Any, rules: IngressRules) -> None:
        self.receive, self.rules = receive, rules
        self.received = 0
        self.complete = False
        self.deadline = asyncio.get_running_loop().time() + rules.body_timeout_s

    async def __call__(self) -> dict[str, Any]:
        if self.complete:  # the body is in: later calls wait for a disconnect, with no limit
            return await self.receive()
        remaining = self.deadline - asyncio.get_running_loop().time()
        try:
            message = await asyncio.wait_for(self.receive(), max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the body took longer than {self.rules.body_timeout_s:g} s to arrive "
                                     "(serving.body_timeout_s)") from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
            if self.received > self.rules.max_body_bytes:
                raise HTTPException(413, f"image: the body passed the limit of {self.rules.max_body_bytes} bytes "
                                         "while it arrived")
        return message


def _route(scope: dict[str, Any]) -> str:
    """The request's path within the app: the path less the app's route prefix."""
    path, prefix = scope["path"], scope.get("root_path", "")
    if prefix and path.startswith(prefix):
        return path[len(prefix):] or "/"
    return path


async def _refuse(refusal: Refusal, scope: dict[str, Any], receive: Any, send: Any) -> None:
    response = JSONResponse(status_code=refusal.status, content={"detail": refusal.detail}, headers=refusal.headers)
    await response(scope, receive, send)
