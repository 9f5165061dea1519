"""Local HTTP servers that answer as SGLang and vLLM do with routed experts on, for the
recording client's tests (no model: each prompt's routing is drawn from its text).

- SGLang ``POST /generate`` (sgl-project/sglang python/sglang/srt/managers/
  detokenizer_manager.py, ``_extract_routed_experts``, commit 1e8903414a43): ``{"text",
  "meta_info": {"id", "prompt_tokens", "completion_tokens", "routed_experts"}}``, the routed
  experts base64 of the int32 bytes of [prompt + completion - 1, layers, k]; without
  ``--enable-return-routed-experts`` (or the request field) there is none.
- vLLM ``POST /v1/completions`` (vllm-project/vllm vllm/entrypoints/openai/completion/
  protocol.py, ``CompletionResponseChoice.routed_experts``, commit 002032ee2b18): each choice's
  ``routed_experts`` is base64 of ``.npy`` bytes [tokens - 1, layers, k], null when off.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


class EngineServer:
    """What the server answered: ``served[text]`` = the routed ids [tokens, layers, k]."""

    def __init__(self, engine: str, layers: int, k: int, num_experts: int, flag: bool) -> None:
        self.engine, self.layers, self.k, self.num_experts = engine, layers, k, num_experts
        self.flag = flag
        self.served: dict[str, np.ndarray] = {}
        self.fail: set[str] = set()  # prompts answered with HTTP 500 (once each)
        self.requests = 0
        self.lock = threading.Lock()

    def routing(self, text: str, tokens: int) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        ids = np.stack(
            [
                np.stack(
                    [
                        rng.choice(self.num_experts, self.k, replace=False)
                        for _ in range(self.layers)
                    ]
                )
                for _ in range(tokens)
            ]
        ).astype(np.int32)
        with self.lock:
            self.served[text] = ids
        return ids

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests += 1
        if self.engine == "sglang" and path == "/generate":
            text = body["text"]
            completion = body["sampling_params"]["max_new_tokens"]
        elif self.engine == "vllm" and path == "/v1/completions":
            text = body["prompt"]
            completion = body["max_tokens"]
        else:
            return 404, {"detail": "Not Found"}
        with self.lock:
            if text in self.fail:
                self.fail.discard(text)
                return 500, {"error": "internal error"}
        prompt = len(text.split())
        on = self.flag and (self.engine == "vllm" or body.get("return_routed_experts"))
        ids = self.routing(text, prompt + completion - 1) if on else None
        if self.engine == "sglang":
            meta = {
                "id": format(zlib.crc32(text.encode()), "x"),
                "finish_reason": {"type": "length", "length": completion},
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cached_tokens": 0,
            }
            if ids is not None:
                meta["routed_experts"] = base64.b64encode(ids.tobytes()).decode()
            return 200, {"text": " x" * completion, "meta_info": meta}
        encoded = None
        if ids is not None:
            buffer = io.BytesIO()
            np.save(buffer, ids.astype(np.uint8 if self.num_experts <= 256 else np.int32))
            encoded = base64.b64encode(buffer.getvalue()).decode()
        choice = {
            "index": 0,
            "text": " x" * completion,
            "logprobs": None,
            "finish_reason": "length",
            "stop_reason": None,
            "routed_experts": encoded,
        }
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return 200, {
            "id": f"cmpl-{zlib.crc32(text.encode()):x}",
            "object": "text_completion",
            "created": 0,
            "model": "moe",
            "choices": [choice],
            "usage": usage,
        }


@contextmanager
def engine_server(
    engine: str, *, layers: int = 3, k: int = 2, num_experts: int = 16, flag: bool = True
) -> Iterator[tuple[str, EngineServer]]:
    """(URL, state) of a server on 127.0.0.1 (a free port) answering in a thread."""
    state = EngineServer(engine, layers, k, num_experts, flag)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, answer = state.answer(self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
