"""A tiny OTLP/HTTP trace receiver on loopback (what a collector does with POST /v1/traces),
for tests that check the spans Nexus exports."""

from __future__ import annotations

import gzip
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass
class Span:
    """One received span, flattened."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]


class OtlpReceiver:
    """``with OtlpReceiver() as rx: ... rx.endpoint ... rx.spans``."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver._add(ExportTraceServiceRequest.FromString(body))
                out = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _add(self, req: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            for rs in req.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in rs.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        attrs: dict[str, Any] = {}
                        for a in sp.attributes:
                            v = a.value
                            attrs[a.key] = (
                                v.string_value
                                if v.HasField("string_value")
                                else v.int_value
                                if v.HasField("int_value")
                                else v.bool_value
                                if v.HasField("bool_value")
                                else v.double_value
                            )
                        self.spans.append(
                            Span(
                                service,
                                sp.name,
                                sp.trace_id.hex(),
                                sp.span_id.hex(),
                                sp.parent_span_id.hex(),
                                sp.kind,
                                attrs,
                            )
                        )

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def tree(self, trace_id: str) -> str:
        """The trace as an indented tree (for failure messages and notes)."""
        spans = [s for s in self.spans if s.trace_id == trace_id]
        children: dict[str, list[Span]] = {}
        ids = {s.span_id for s in spans}
        for s in spans:
            children.setdefault(s.parent_id if s.parent_id in ids else "", []).append(s)
        lines: list[str] = []

        def walk(parent: str, depth: int) -> None:
            for s in children.get(parent, []):
                extra = {k: v for k, v in s.attributes.items() if k.startswith("nexus.")}
                lines.append(f"{'  ' * depth}{s.name} {extra}")
                walk(s.span_id, depth + 1)

        walk("", 0)
        return "\n".join(lines)
