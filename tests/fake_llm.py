"""One fake OpenAI-compatible /chat/completions server for every test that talks to an LLM endpoint.

Each test gives it its own `answer(body) -> reply text`; the server records every request (path, the
Authorization header, the JSON body), can fail with an HTTP status, answer with `usage`, or redirect."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable


class FakeChatServer:
    def __init__(self, answer: Callable[[dict], str] = lambda body: "ok", usage: dict | None = None) -> None:
        self.answer = answer
        self.usage = usage
        self.status = 200  # anything else: that status with an error body
        self.redirect_to: str | None = None  # a base URL: answer 307 to it
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if fake.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", fake.redirect_to + "/chat/completions")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fake.status != 200:
                    self.send_response(fake.status)
                    self.end_headers()
                    self.wfile.write(b'{"error": "boom"}')
                    return
                reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": fake.answer(body)}}]}
                if fake.usage is not None:
                    reply["usage"] = fake.usage
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    @property
    def seen_auth(self) -> list[str | None]:
        """The Authorization header of each request (None when absent)."""
        return [r["auth"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def last_prompt(body: dict) -> str:
    return body["messages"][-1]["content"]
