"""Recording a trace from a running server: prompts sent with routed experts on, each
response saved as one line of a JSON Lines file that `load_trace` reads
(`moefast.io.readers.routed`).

SGLang: ``POST {url}/generate`` with ``"return_routed_experts": true``; vLLM: ``POST
{url}/v1/completions``. Both servers must run with ``--enable-return-routed-experts``; a
response without routed experts stops the recording with an error saying so. Responses are
appended as they arrive, so a recording stopped by a failure resumes where it stopped:
prompts whose id is already in the file are skipped.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moefast._util.checks import check_count
from moefast._util.progress import progress
from moefast.io.readers._errors import malformed
from moefast.io.readers.routed import ENGINES, iter_lines, routed_experts
from moefast.trace import PathLike


@dataclass(frozen=True)
class Prompt:
    id: Any
    text: str


def read_prompts(path: PathLike) -> list[Prompt]:
    """The prompts of a JSON Lines file: ``{"id": ..., "text": "..."}`` a line (``"prompt"``
    for ``"text"`` too; without an id, the line's index from 0). Ids must be distinct."""
    path = Path(path)
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for number, line in iter_lines(path):
        text = line.get("text", line.get("prompt"))
        if not isinstance(text, str):
            raise malformed(path, "each prompt needs a string 'text' (or 'prompt')", number)
        pid = line.get("id", len(prompts))
        if isinstance(pid, bool) or not isinstance(pid, (int, str)):
            raise malformed(path, f"'id' must be a string or an integer, got {pid!r}", number)
        if _key(pid) in seen:
            raise malformed(path, f"prompt id {pid!r} appears twice", number)
        seen.add(_key(pid))
        prompts.append(Prompt(pid, text))
    if not prompts:
        raise malformed(path, "holds no prompt")
    return prompts


def _key(pid: Any) -> str:
    """1 and "1" are different ids."""
    return json.dumps(pid)


def done_ids(out: Path) -> set[str]:
    """The ids already recorded in ``out`` (none if it does not exist); a last line cut off
    by a crash is dropped from the file."""
    if not out.exists():
        return set()
    text = out.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):  # a write interrupted mid-line
        text = text[: text.rfind("\n") + 1]
        out.write_text(text, encoding="utf-8")
    return {_key(line.get("id")) for _, line in iter_lines(out)}


def request_body(engine: str, prompt: Prompt, max_tokens: int, model: str | None) -> dict:
    if engine == "sglang":
        return {
            "text": prompt.text,
            "sampling_params": {"max_new_tokens": max_tokens, "temperature": 0},
            "return_routed_experts": True,
        }
    body: dict[str, Any] = {"prompt": prompt.text, "max_tokens": max_tokens, "temperature": 0}
    if model is not None:
        body["model"] = model
    return body


def post_json(url: str, body: Mapping[str, Any], timeout: float) -> Any:
    """The JSON answer of a POST; OSError naming the URL and the server's message."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        detail = err.read()[:500].decode("utf-8", errors="replace")
        raise OSError(f"{url}: HTTP {err.code} {err.reason}: {detail}") from err
    except urllib.error.URLError as err:
        raise OSError(f"{url}: {err.reason}") from err
    except json.JSONDecodeError as err:
        raise OSError(f"{url}: the answer is not JSON ({err.msg})") from err


def record(
    url: str,
    prompts: PathLike,
    out: PathLike,
    *,
    engine: str = "sglang",
    num_layers: int | None = None,
    k: int | None = None,
    max_tokens: int = 16,
    concurrency: int = 8,
    model: str | None = None,
    timeout: float = 600.0,
    progress_bar: bool | None = None,
) -> int:
    """Sends each prompt of the JSON Lines file ``prompts`` to the server at ``url``
    (``engine`` ``"sglang"`` or ``"vllm"``), ``concurrency`` at a time, and appends each
    response with its routed experts to ``out``; returns the number of prompts sent.
    Prompts already in ``out`` are skipped (a recording resumes). SGLang needs
    ``num_layers`` (MoE layers) and ``k`` to read its answers; they are saved with each line.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; known: {ENGINES}")
    if engine == "sglang" and (num_layers is None or k is None):
        raise ValueError(
            "SGLang returns routed experts without their shape: give the model's number of"
            " MoE layers and top-k (num_layers=, k=; --num-layers, --top-k)"
        )
    concurrency = check_count("concurrency", concurrency)
    max_tokens = check_count("max_tokens", max_tokens)
    out = Path(out)
    done = done_ids(out)
    todo = [p for p in read_prompts(prompts) if _key(p.id) not in done]
    endpoint = url.rstrip("/") + ("/generate" if engine == "sglang" else "/v1/completions")
    shape = None if engine == "vllm" else [num_layers, k]
    lock = threading.Lock()

    def send(prompt: Prompt) -> None:
        response = post_json(endpoint, request_body(engine, prompt, max_tokens, model), timeout)
        if not isinstance(response, dict):
            raise OSError(f"{endpoint}: the answer is not a JSON object")
        line = {"id": prompt.id, "engine": engine, "shape": shape, "response": response}
        if shape is None:
            del line["shape"]
        try:
            routed_experts(line)  # refuse a server with the flag off before saving anything
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{endpoint}, prompt {prompt.id!r}: {err}") from err
        text = json.dumps(line) + "\n"
        with lock, open(out, "a", encoding="utf-8") as f:
            f.write(text)

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(send, p) for p in todo]
        finished = as_completed(futures)
        shown = progress(finished, total=len(futures), desc="prompts") if progress_bar else finished
        try:
            for future in shown:
                future.result()  # the first failure stops the recording
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return len(todo)
