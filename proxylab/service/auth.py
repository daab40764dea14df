"""Bearer tokens with scopes: who may read and who may write the zoo.

Token file (``--tokens FILE``) or ``PROXYLAB_TOKENS``: one entry per line (the variable may also separate
entries by commas), ``TOKEN SCOPE`` or ``TOKEN:SCOPE``; ``#`` starts a comment. Scopes:

- ``read``: list, get and query (needed only when the service runs with ``--private``);
- ``write``: everything ``read`` may do, plus register and delete models.

An entry without a scope is a ``write`` token (the common case: tokens exist to guard writes).
Tokens use the RFC 6750 token characters (letters, digits, ``-._~+/=``) and are at least 16 characters long,
so a guessable token is refused at start-up rather than trusted.

HTTP answers: no token, a malformed header or an unknown token -> 401 with ``WWW-Authenticate: Bearer``;
a known token whose scope does not allow the request (a ``read`` token deleting a model) -> 403.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

from proxylab.errors import ProxylabError

SCOPES = ("read", "write")
MIN_TOKEN_LENGTH = 16
_TOKEN_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
ENV_VAR = "PROXYLAB_TOKENS"


def parse_tokens(text: str, source: str) -> Dict[str, str]:
    """token -> scope from the file/variable syntax above; ProxylabError naming the bad line."""
    tokens: Dict[str, str] = {}
    lines = text.replace(",", "\n").splitlines() if source == ENV_VAR else text.splitlines()
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(":", " ").split()
        token, scope = parts[0], (parts[1] if len(parts) > 1 else "write")
        where = f"{source}, entry {number}"
        if len(parts) > 2 or scope not in SCOPES:
            raise ProxylabError(f"{where}: expected 'TOKEN [read|write]', got '{line[:60]}'")
        if not _TOKEN_RE.match(token) or len(token) < MIN_TOKEN_LENGTH:
            raise ProxylabError(f"{where}: tokens need at least {MIN_TOKEN_LENGTH} characters among letters, digits "
                                "and -._~+/= (make one with: python -c 'import secrets; print(secrets.token_urlsafe())')")
        if token in tokens and tokens[token] != scope:
            raise ProxylabError(f"{where}: this token is listed twice with different scopes")
        tokens[token] = scope
    return tokens


def load_tokens(path: Optional[str] = None) -> Dict[str, str]:
    """Tokens from ``path`` when given, else from $PROXYLAB_TOKENS, else none (every write is refused)."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise ProxylabError(f"token file '{path}' does not exist; write one token per line ('TOKEN write')")
        return parse_tokens(p.read_text(encoding="utf-8"), str(p))
    return parse_tokens(os.environ.get(ENV_VAR, ""), ENV_VAR)


class AuthError(Exception):
    """401 (who are you?) or 403 (you may not); the app turns it into the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _digest(token: str) -> bytes:
    # equal-length digests: compare_digest then takes the same time whatever the candidate's length or prefix
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class TokenChecker:
    def __init__(self, tokens: Dict[str, str], open_reads: bool = True):
        for token, scope in tokens.items():
            if scope not in SCOPES:
                raise ProxylabError(f"token scope '{scope}' is not one of {', '.join(SCOPES)}")
        # hashed once here, not on every request; the tokens themselves are not kept
        self._known: Tuple[Tuple[bytes, str], ...] = tuple((_digest(t), scope) for t, scope in tokens.items())
        self.open_reads = open_reads

    def __len__(self) -> int:
        return len(self._known)

    def _scope_of(self, header: Optional[str]) -> Optional[str]:
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(401, "the Authorization header must read 'Bearer TOKEN'")
        candidate = _digest(token.strip())
        # compare against every token in constant time so the answer time does not leak which one matched
        found = None
        for known, scope in self._known:
            if hmac.compare_digest(known, candidate):
                found = scope
        if found is None:
            raise AuthError(401, "the bearer token is not valid for this service")
        return found

    def require(self, header: Optional[str], need: str) -> None:
        """Raise AuthError unless the Authorization header grants ``need`` ('read' or 'write')."""
        if need == "read" and self.open_reads:
            # an invalid token on an open read is still a client error worth telling, not silently ignored
            self._scope_of(header)
            return
        scope = self._scope_of(header)
        if scope is None:
            hint = "" if self._known else " (this service has no tokens configured: start it with --tokens FILE)"
            raise AuthError(401, f"this request needs a bearer token with '{need}' scope{hint}")
        if need == "write" and scope != "write":
            raise AuthError(403, "this token may only read; registering and deleting models need a 'write' token")
