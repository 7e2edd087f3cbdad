#!/usr/bin/env python3
"""A do-nothing OTLP/HTTP collector for benchmarks: answers every POST with 200 {} and counts
the bytes it was sent. Usage: bench/otlp-sink.py [PORT] (default 24190)."""
import http.server
import sys


class Sink(http.server.BaseHTTPRequestHandler):
    received = 0

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        Sink.received += n
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 24190
http.server.ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
