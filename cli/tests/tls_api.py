"""Test-only: a loopback HTTPS API that answers 200 {"ok": true} when a request carries
`Authorization: Bearer <expected>` and 401 otherwise, for kubectl (which runs exec credential
plugins only for TLS clusters). Usage: tls_api.py CERT KEY EXPECTED_TOKEN LIFETIME_S; prints
its port on stdout."""
import http.server
import json
import ssl
import sys
import threading
import time

certificate, key, expected, lifetime = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer " + expected
        body = json.dumps({"ok": ok}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(certificate, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
time.sleep(lifetime)
