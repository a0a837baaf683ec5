"""Who may call the endpoint, and how much: API keys, the loopback rule, per-key quotas.

Keys come from ``serving.api_keys_file`` (one per line, ``#`` comments; a line
``sha256:<hex>`` is a key's digest, so the file need not hold the keys themselves) and from
``I2VGEN_API_KEYS`` (comma-separated). Only SHA-256 digests are kept in memory and passed
to the replicas, and a job's record holds its caller's digest (``owner``), never the key.

With keys configured, every route but ``/healthz`` needs ``Authorization: Bearer KEY``:
401 without one, 403 with a wrong one. With none, the endpoint is for this machine only:
it binds to 127.0.0.1, and the ingress answers 403 to any client that is not loopback
(``serve deploy`` may bind wherever its config says, so the check does not rely on the
bind alone).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from pipeline.config.loader import ConfigError
from pipeline.config.schema import ServingConfig

KEYS_ENV = "I2VGEN_API_KEYS"
_DIGEST_LINE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
OPEN_PATHS = frozenset({"/healthz"})


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_key_digests(serving: ServingConfig, environ: Optional[dict[str, str]] = None) -> frozenset[str]:
    """The digests of every configured key (empty: no keys, loopback only)."""
    environ = os.environ if environ is None else environ
    entries = [k.strip() for k in environ.get(KEYS_ENV, "").split(",")]
    if serving.api_keys_file:
        path = Path(serving.api_keys_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"serving.api_keys_file: cannot read {path} ({type(err).__name__}: {err})") from None
        entries += [line.strip() for line in lines if not line.strip().startswith("#")]
        if not any(entries):
            raise ConfigError(f"serving.api_keys_file: {path} holds no keys")
    digests = set()
    for entry in filter(None, entries):
        match = _DIGEST_LINE.match(entry)
        digests.add(match.group(1).lower() if match else key_digest(entry))
    return frozenset(digests)


def is_loopback(host: Optional[str]) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Refusal:
    """A caller turned away before any work: its status, message and headers."""

    status: int
    detail: str
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail)
        self.refusal = refusal


def caller(digests: frozenset[str], path: str, client_host: Optional[str], authorization: Optional[str]) -> Optional[str]:
    """The calling key's digest (None when no keys are configured); ``Refused`` otherwise."""
    if path in OPEN_PATHS:
        return None
    if not digests:
        if not is_loopback(client_host):
            raise Refused(Refusal(403, "this endpoint has no API keys configured, so it serves this machine only "
                                       "(set serving.api_keys_file or I2VGEN_API_KEYS to open it to the network)"))
        return None
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Refused(Refusal(401, "an API key is required: send 'Authorization: Bearer KEY'",
                              {"WWW-Authenticate": "Bearer"}))
    digest = key_digest(key.strip())
    if digest not in digests:
        raise Refused(Refusal(403, "this API key is not accepted"))
    return digest


class RequestRate:
    """Per-key requests per minute over a sliding window: how long until the next is allowed."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.seen: dict[str, deque[float]] = {}

    def take(self, owner: str, now: Optional[float] = None) -> Optional[float]:
        """Count one request of ``owner``; None if allowed, else the seconds to wait."""
        if self.per_minute <= 0:
            return None
        now = time.monotonic() if now is None else now
        times = self.seen.setdefault(owner, deque())
        while times and now - times[0] >= self.WINDOW_S:
            times.popleft()
        if len(times) >= self.per_minute:
            return self.WINDOW_S - (now - times[0])
        times.append(now)
        return None

    def forget_idle(self, now: Optional[float] = None) -> None:
        """Drop keys with nothing in the window, so the table holds active keys only."""
        now = time.monotonic() if now is None else now
        for owner in [o for o, t in self.seen.items() if not t or now - t[-1] >= self.WINDOW_S]:
            del self.seen[owner]


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """A job record as its caller sees it: without the owner's digest."""
    return {k: v for k, v in record.items() if k != "owner"}
