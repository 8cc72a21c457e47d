"""A pass-through proxy in front of fake-gcs-server for the one GCS call it lacks.

object_store's GCS client uploads with the XML API: `PUT /<bucket>/<object>` with a bearer
token. fake-gcs-server (1.54) serves that route only for signed-URL uploads (it looks for an
`X-Goog-Algorithm` query parameter, else answers 400 "invalid uploadType"), stores them exactly
as Google's XML API would (body, Content-Type, Cache-Control, x-goog-meta-*), but answers with
the object's JSON and no ETag header, which object_store requires. This proxy changes only
those uploads: it adds the query parameter on the way in and copies the JSON `etag` into an
`ETag` header on the way out. Every other request and response passes unchanged, and the Host
header is kept, so fake-gcs-server (started with `-public-host` set to this proxy's address)
sees the address clients use.

Usage: xml_upload_shim.py LISTEN_PORT UPSTREAM_PORT (both on 127.0.0.1).
"""

import http.client
import http.server
import json
import sys

LISTEN_PORT, UPSTREAM_PORT = int(sys.argv[1]), int(sys.argv[2])
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def is_xml_upload(method, path):
    """A PUT of an object by the XML API: /<bucket>/<object>, no query, not a JSON API path."""
    return (
        method == "PUT"
        and "?" not in path
        and not path.startswith(("/storage/", "/upload/", "/_internal/"))
        and path.count("/") >= 2
    )


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def forward(self):
        if self.headers.get("Transfer-Encoding"):
            self.send_error(501, "chunked request bodies are not supported by this test proxy")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        path = self.path
        upload = is_xml_upload(self.command, path)
        if upload:
            path += "?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection("127.0.0.1", UPSTREAM_PORT, timeout=60)
        try:
            upstream.request(self.command, path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            out_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        finally:
            upstream.close()
        if upload and response.status == 200 and not any(k.lower() == "etag" for k, _ in out_headers):
            etag = json.loads(payload).get("etag")
            if etag:
                out_headers.append(("ETag", f'"{etag}"'))
        # A HEAD answer has no body: its Content-Length is the object's, passed on as it came.
        length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(payload))
        self.send_response_only(response.status, response.reason)
        for name, value in out_headers:
            self.send_header(name, value)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = forward

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    server = http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN_PORT), Proxy)
    server.daemon_threads = True
    server.serve_forever()
