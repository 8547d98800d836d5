"""The trace exporter's OTLP/HTTP client (traceexport.py): a batch's spans POSTed to the
collector. Imported by an exporter given an endpoint alone: http.client and urllib were
most of the exporter's imports, and one that keeps spans in its local store needs neither."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable


class Collector:
    """POSTs to the OTLP/HTTP endpoint on one connection kept open between batches (a
    connection a request cost the exporter about as much as encoding the batch did);
    through urllib, a request at a time, when a proxy of the environment applies."""

    # what a failed POST raises: the batch is lost, the exporter goes on
    FAILURES = (OSError, urllib.error.URLError, ValueError, http.client.HTTPException)

    def __init__(self, endpoint: str, headers: dict[str, str], timeout: float) -> None:
        self.endpoint = endpoint
        self.headers = {"Content-Type": "application/x-protobuf", **headers}
        self.timeout = timeout
        url = urllib.parse.urlsplit(endpoint)
        self.path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        proxied = url.scheme in urllib.request.getproxies() and not (
            url.hostname and urllib.request.proxy_bypass(url.hostname))
        self._new: Callable[[], http.client.HTTPConnection] | None = None
        if not proxied and url.hostname and url.scheme in ("http", "https"):
            kind = (http.client.HTTPSConnection if url.scheme == "https"
                    else http.client.HTTPConnection)
            host, port = url.hostname, url.port
            self._new = lambda: kind(host, port, timeout=timeout)
        self._conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes) -> None:
        """Raises what urllib raises when the request fails (an answer of 300 or more
        included: an HTTPError)."""
        if self._new is None:
            request = urllib.request.Request(self.endpoint, data=body, method="POST",
                                             headers=self.headers)
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                answer.read()
            return
        if self._conn is None:
            self._conn = self._new()
        try:
            self._conn.request("POST", self.path, body, self.headers)
            answer = self._conn.getresponse()
            answer.read()
        except BaseException:
            self._conn.close()  # the next batch on a new connection
            self._conn = None
            raise
        if answer.status >= 300:
            raise urllib.error.HTTPError(self.endpoint, answer.status, answer.reason,
                                         answer.headers, None)
