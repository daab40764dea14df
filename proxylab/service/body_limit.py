"""The request-body size limit, enforced while the app reads the body and never before.

Nothing is read up front: the route's token check (a FastAPI dependency) runs first, so a caller without the
right token gets its 401/403 without the service reading a byte of its body. When a handler first asks for
the body, a declared Content-Length over the limit raises ``BodyTooLarge`` before any byte is read (uvicorn
sends ``100 Continue`` only on that first read, so a client that waits for it never sends the body); a
chunked body is counted as it streams and refused at the limit. The app turns ``BodyTooLarge`` into 413.

An answer sent while a large part of the body is still unread (a 401, a 413, a 404) carries
``Connection: close``: the server then drops the connection instead of draining the rest of the upload.
"""
from __future__ import annotations

# uvicorn buffers about this much of a body by itself; a smaller unread rest is cheaper to drain than to
# reconnect for, so the connection is kept
SMALL_REST = 64 << 10


class BodyTooLarge(Exception):
    """HTTP 413; the message names the limit."""


class BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    def _too_large(self, size_text: str) -> BodyTooLarge:
        return BodyTooLarge(f"request body of {size_text} is over this service's limit of {self.max_body_bytes} "
                            "bytes; send fewer images or ask the operator to raise --max-body-mb")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length")
        # uvicorn (h11) already answers 400 to a malformed Content-Length; anything else counts as undeclared
        declared = int(declared) if declared is not None and declared.isdigit() else None
        chunked = b"transfer-encoding" in headers
        state = {"received": 0, "done": declared in (None, 0) and not chunked}

        async def limited_receive():
            if declared is not None and declared > self.max_body_bytes:
                raise self._too_large(f"{declared} bytes")
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body_bytes:
                    raise self._too_large(f"more than {self.max_body_bytes} bytes")
                state["done"] = not message.get("more_body", False)
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and not state["done"]:
                rest = None if declared is None else declared - state["received"]
                if rest is None or rest > SMALL_REST:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, closing_send)
