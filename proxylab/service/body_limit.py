"""Refuse request bodies over a size limit with 413, before any handler parses them.

A declared Content-Length over the limit is refused without reading a byte; a chunked body is read only up
to the limit. The body read here is replayed to the app, so the handlers see an ordinary request.
"""
from __future__ import annotations

import json


async def _reply(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    def _too_large(self, size_text: str) -> str:
        return (f"request body of {size_text} is over this service's limit of {self.max_body_bytes} bytes; "
                "send fewer images or ask the operator to raise --max-body-mb")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _reply(send, 400, "the Content-Length header is not an integer")
                    return
        if declared is not None and declared > self.max_body_bytes:
            await _reply(send, 413, self._too_large(f"{declared} bytes"))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left; nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reply(send, 413, self._too_large(f"more than {self.max_body_bytes} bytes"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body, pass through disconnect notifications

        await self.app(scope, replay, send)
