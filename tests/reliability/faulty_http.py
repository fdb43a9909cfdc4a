"""A small HTTP relay on 127.0.0.1 that puts faults between a client and a real server (here: moto's S3).

Every request is forwarded as is (method, path, headers, body) and the real answer relayed back, except
where the test's `fault(method, path, n)` says otherwise: it returns an HTTP status to answer instead (the
upstream never sees that request), or None to forward. `n` counts requests of that method, from 1. What the
relay saw is kept in `seen` as (method, path, status answered).
"""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import urlsplit

Fault = Callable[[str, str, int], "int | None"]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultyRelay:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.fault: Fault = lambda method, path, n: None
        self.seen: list[tuple[str, str, int]] = []
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self._counts.clear()

    def count(self, method: str, status: int | None = None) -> int:
        return sum(1 for m, _, s in self.seen if m == method and (status is None or s == status))

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and 100-continue, as botocore expects

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("transfer-encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _any(self) -> None:
                body = self._body()  # always read, so the connection stays usable after a refusal
                with relay._lock:
                    relay._counts[self.command] += 1
                    n = relay._counts[self.command]
                status = relay.fault(self.command, self.path, n)
                if status is not None:
                    payload = (
                        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                        b"<Message>injected by the test relay</Message></Error>"
                    )
                    self.send_response(status)
                    self.send_header("content-type", "application/xml")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    relay.seen.append((self.command, self.path, status))
                    return
                conn = http.client.HTTPConnection(*relay.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length", "expect"}}
                headers["content-length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                conn.close()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(key, value)
                length = answer.getheader("content-length") if self.command == "HEAD" else str(len(data))
                self.send_header("content-length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                relay.seen.append((self.command, self.path, answer.status))

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        return Handler
