"""msa.captioning against a real local OpenAI-compatible HTTP server, plus the offline ImageNet captioner."""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from msa import captioning as cap

KEY = "sk-test-SECRET-1234567890abcdef"
MAX_SIDE = 64
# distinct solid colours: the server recognises image i by its centre pixel
PALETTE = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20), (20, 230, 230), (230, 20, 230),
           (120, 60, 0), (0, 120, 60), (60, 0, 120), (250, 250, 250)]
SENTIMENT_WORDS = {"happy", "sad", "good", "bad", "positive", "negative", "beautiful", "ugly", "love", "hate",
                   "great", "terrible", "awful", "wonderful", "nice", "horrible", "angry", "joy"}


class FakeVLM:
    """Per-image behaviour queues: each request for image i pops the next behaviour (default "ok")."""

    def __init__(self):
        self.behaviours: dict[int, list[str]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()

    def count(self, idx: int | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if idx is None or r["idx"] == idx)

    def reset(self):
        with self.lock:
            self.requests.clear()


def _identify(url: str) -> tuple[int, tuple[int, int]]:
    assert url.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert img.format == "JPEG"
    px = img.convert("RGB").getpixel((img.width // 2, img.height // 2))
    idx = min(range(len(PALETTE)), key=lambda i: sum((a - b) ** 2 for a, b in zip(PALETTE[i], px)))
    return idx, img.size


def _make_handler(state: FakeVLM):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None):
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path != "/v1/chat/completions":
                return self._send(404, b'{"error": {"message": "not found"}}')
            parts = body["messages"][0]["content"]
            url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
            prompt = next(p["text"] for p in parts if p["type"] == "text")
            idx, size = _identify(url)
            with state.lock:
                queue = state.behaviours.get(idx, [])
                action = queue.pop(0) if queue else "ok"
                state.requests.append({"idx": idx, "auth": self.headers.get("Authorization"), "size": size,
                                       "model": body["model"], "prompt": prompt, "action": action})
            content = f"A square filled with colour number {idx}."
            if action == "429":
                return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": "0"})
            if action == "500":
                return self._send(500, b'{"error": {"message": "boom"}}')
            if action == "400":
                return self._send(400, b'{"error": {"message": "bad image", "type": "invalid_request_error"}}')
            if action == "slow":
                time.sleep(1.5)
            if action == "malformed":
                return self._send(200, b"<html>this is not json</html>")
            if action == "empty":
                content = "   "
            if action == "refusal":
                content = "I'm sorry, I can't help with that."
            answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                      "model": body["model"],
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18}}
            return self._send(200, json.dumps(answer).encode())

    return Handler


@pytest.fixture()
def server():
    state = FakeVLM()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def images(tmp_path) -> list[tuple[str, Path]]:
    folder = tmp_path / "images"
    folder.mkdir()
    items = []
    for i, colour in enumerate(PALETTE):
        path = folder / f"{i}.jpg"
        Image.new("RGB", (200 + 10 * i, 150), colour).save(path, quality=95)  # larger than MAX_SIDE
        items.append((f"g{i}", path))
    return items


def _captioner(server, tmp_path, **kw) -> cap.OpenAICaptioner:
    sleeps = kw.pop("sleeps", [])
    args = dict(base_url=server.base_url, model="fake-vl", prompt=cap.DEFAULT_PROMPT, api_key=KEY,
                cache_dir=tmp_path / "cache", failures_path=tmp_path / "failures.jsonl", concurrency=4,
                timeout=5.0, max_retries=3, max_side=MAX_SIDE, progress=False, backoff_base=0.01,
                sleep=sleeps.append)
    args.update(kw)
    return cap.OpenAICaptioner(**args)


def _failures(tmp_path) -> list[dict]:
    path = tmp_path / "failures.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _assert_no_secret(tmp_path, text: str = ""):
    assert KEY not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_happy_path_downscale_and_key(server, images, tmp_path):
    c = _captioner(server, tmp_path)
    res = c.caption(images[:4])
    assert [r.guid for r in res] == ["g0", "g1", "g2", "g3"]
    assert all(r.source == "api" and r.error is None for r in res)
    assert res[2].caption == "A square filled with colour number 2."
    assert server.count() == 4
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)  # the key reached the server
    assert all(max(r["size"]) <= MAX_SIDE for r in server.requests)  # downscaled before base64
    assert all(r["prompt"] == cap.DEFAULT_PROMPT and r["model"] == "fake-vl" for r in server.requests)
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("*.json")]
    assert len(entries) == 4
    for e in entries:
        assert e["model"] == "fake-vl" and e["caption"] and e["created"]
        assert "base64" not in json.dumps(e) and len(json.dumps(e)) < 1000  # no image in the cache
    # a rerun answers everything from the cache
    server.reset()
    again = c.caption(images[:4])
    assert server.count() == 0 and all(r.source == "cache" for r in again)
    assert [r.caption for r in again] == [r.caption for r in res]


def test_retries_429_500_timeout(server, images, tmp_path):
    server.behaviours = {0: ["429", "429"], 1: ["500"], 2: ["slow"]}
    sleeps: list[float] = []
    c = _captioner(server, tmp_path, timeout=0.5, sleeps=sleeps)
    res = c.caption(images[:4])
    assert all(r.caption for r in res), res
    assert [server.count(i) for i in range(4)] == [3, 2, 2, 1]
    assert 0.0 in sleeps  # Retry-After: 0 was honoured
    assert len(sleeps) == 4 and max(sleeps) < 1.0
    assert _failures(tmp_path) == []


def test_retries_exhausted_is_failure(server, images, tmp_path):
    server.behaviours = {0: ["500"] * 10}
    c = _captioner(server, tmp_path, max_retries=2)
    (res,) = c.caption(images[:1])
    assert res.caption is None and "retries exhausted" in res.error
    assert server.count(0) == 3
    assert _failures(tmp_path)[0]["guid"] == "g0"


def test_failures_recorded_not_cached(server, images, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    server.behaviours = {0: ["400"], 1: ["malformed"], 2: ["empty"], 3: ["refusal"]}
    c = _captioner(server, tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    items = images[:5] + [("nofile", None), ("gone", tmp_path / "images" / "missing.jpg"),
                          ("broken", tmp_path / "broken.jpg")]
    res = c.caption(items)
    by = {r.guid: r for r in res}
    assert [r.guid for r in res] == [g for g, _ in items]
    assert by["g4"].caption and by["g4"].error is None
    for g in ("g0", "g1", "g2", "g3", "nofile", "gone", "broken"):
        assert by[g].caption is None and by[g].error, g
    assert by["g0"].error.startswith("HTTP 400")
    assert "malformed" in by["g1"].error
    assert by["g2"].error == "empty content"
    assert by["g3"].error.startswith("refusal")
    assert by["nofile"].error == "no image" and by["gone"].error.startswith("no image")
    assert by["broken"].error.startswith("no image (broken.jpg")  # undecodable: never sent
    assert [server.count(i) for i in range(5)] == [1, 1, 1, 1, 1]  # no retry on 400 / bad answers
    assert len(server.requests) == 5
    fails = _failures(tmp_path)
    assert {f["guid"] for f in fails} == {"g0", "g1", "g2", "g3", "nofile", "gone", "broken"}
    assert all(f["reason"] and f["time"] for f in fails)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1  # only g4 was cached
    # failures are asked again on a rerun (now answered), successes are not
    server.reset()
    res2 = c.caption(items)
    assert sorted(r["idx"] for r in server.requests) == [0, 1, 2, 3]
    assert all(r.caption for r in res2[:5])
    out = capsys.readouterr()
    _assert_no_secret(tmp_path, out.out + out.err + caplog.text)


def test_interrupted_run_resumes(server, images, tmp_path):
    class Stop(BaseException):
        pass

    def sleep(_):  # the 500 for image 3 triggers a backoff sleep, which "interrupts" the run (like Ctrl-C)
        raise Stop

    server.behaviours = {3: ["500"]}
    c = _captioner(server, tmp_path, concurrency=1, sleep=sleep)
    with pytest.raises(Stop):
        c.caption(images)
    done = len(list((tmp_path / "cache").glob("*.json")))
    # items 0-2 were cached as they arrived; the pool worker may already have taken item 4 when the interrupt
    # reaches the main thread, but the rest were cancelled
    assert done in (3, 4) and server.count() == done + 1
    server.reset()
    c2 = _captioner(server, tmp_path, concurrency=4)
    res = c2.caption(images)
    assert all(r.caption for r in res)
    assert server.count() == len(images) - done  # only the missing ones were requested
    assert 3 in {r["idx"] for r in server.requests} and 0 not in {r["idx"] for r in server.requests}
    assert [r.source for r in res[:3]] == ["cache"] * 3


def test_corrupt_cache_entry_is_requested_again(server, images, tmp_path):
    c = _captioner(server, tmp_path)
    c.caption(images[:2])
    entry = next((tmp_path / "cache").glob("*.json"))
    entry.write_text("{not json")
    server.reset()
    res = c.caption(images[:2])
    assert server.count() == 1 and all(r.caption for r in res)
    json.loads(entry.read_text())  # rewritten


def test_cache_key_depends_on_model_prompt_and_bytes(server, images, tmp_path):
    c = _captioner(server, tmp_path)
    data = images[0][1].read_bytes()
    k = c.cache_key(data)
    assert k != _captioner(server, tmp_path, model="other").cache_key(data)
    assert k != _captioner(server, tmp_path, prompt="other").cache_key(data)
    assert k != c.cache_key(images[1][1].read_bytes())
    assert KEY not in repr(c)


def test_key_never_leaks_in_errors(server, images, tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    # an unreachable endpoint whose URL carries the key: the connection-error text must be scrubbed
    c = _captioner(server, tmp_path, base_url=f"http://127.0.0.1:1/{KEY}/v1", max_retries=1)
    (res,) = c.caption(images[:1])
    assert res.caption is None and "retries exhausted" in res.error
    assert c.scrub(f"x {KEY} y") == "x *** y"
    out = capsys.readouterr()
    _assert_no_secret(tmp_path, out.out + out.err + caplog.text + res.error)


def test_resolve_api_key_order(monkeypatch):
    for var in cap.API_KEY_ENV:
        monkeypatch.delenv(var, raising=False)
    assert cap.resolve_api_key() == ""
    assert cap.resolve_api_key("const") == "const"
    monkeypatch.setenv("OPENAI_API_KEY", "openai")
    assert cap.resolve_api_key("const") == "openai"
    monkeypatch.setenv("DASHSCOPE_API_KEY", "dash")
    assert cap.resolve_api_key("const") == "dash"
    monkeypatch.setenv("VLM_API_KEY", "vlm")
    assert cap.resolve_api_key("const") == "vlm"
    monkeypatch.setenv("VLM_API_KEY", "  ")  # blank counts as unset
    assert cap.resolve_api_key("const") == "dash"


def test_imagenet_captioner_offline(tmp_path):
    from msa.backbones import image_backbone

    paths = []
    for i, draw_fn in enumerate((lambda d: d.ellipse((40, 40, 180, 180), fill=(250, 200, 0)),
                                 lambda d: d.rectangle((20, 60, 200, 160), fill=(30, 30, 200)))):
        img = Image.new("RGB", (224, 224), (240, 240, 240))
        draw_fn(ImageDraw.Draw(img))
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    captioner = cap.ImageNetCaptioner(image_backbone("efficientnet_lite0"), top_k=3, batch_size=1)
    assert captioner.name == "imagenet"
    res = captioner.caption([("a", paths[0]), ("missing", None), ("b", paths[1])])
    assert [r.guid for r in res] == ["a", "missing", "b"]
    for r in (res[0], res[2]):
        assert r.source == "offline" and r.error is None
        assert r.caption.startswith("a photo showing: ") and len(r.caption.split(": ", 1)[1].split(", ")) == 3
        words = set(r.caption.lower().replace(",", " ").split())
        assert not words & SENTIMENT_WORDS, r.caption
    # documented behaviour: a missing image is a failure, not a caption of the grey placeholder
    assert res[1].caption is None and res[1].error == "no image"


def test_imagenet_captions_through_onnx_equal_pytorch(tmp_path):
    # the ONNX export + the backbone's own classifier head name the same classes as the eager model
    import numpy as np
    import torch

    from msa.backbones import image_backbone

    rng = np.random.default_rng(3)
    paths = []
    for i in range(6):
        img = Image.fromarray(rng.integers(0, 255, (160, 200, 3), dtype=np.uint8))
        ImageDraw.Draw(img).ellipse((30 + 5 * i, 20, 150, 140), fill=(int(40 * i), 180, 90))
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    bb = image_backbone("efficientnet_lite0")
    items = [(str(i), p) for i, p in enumerate(paths)]
    eager = cap.ImageNetCaptioner(bb, top_k=3, batch_size=4).caption(items)
    fast_cap = cap.ImageNetCaptioner(bb, top_k=3, batch_size=4, onnx_dir=tmp_path / "cache")
    assert fast_cap._top_classes(True).__name__ == "via_onnx"  # onnxruntime is installed: its route is taken
    from msa import onnx_accel

    shared = dict(onnx_accel._SESSIONS)
    fast = fast_cap.caption(items)
    assert [r.caption for r in fast] == [r.caption for r in eager]
    assert onnx_accel._SESSIONS == shared  # a session of its own, freed with the captions (phase 4 trains next)
    # images are decoded batch by batch: an undecodable file among them is one failure, the others as before
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    mixed = items[:3] + [("bad", tmp_path / "bad.png")] + items[3:]
    again = cap.ImageNetCaptioner(bb, top_k=3, batch_size=4, onnx_dir=tmp_path / "cache").caption(mixed)
    assert [r.guid for r in again] == [g for g, _ in mixed]
    assert [r.caption for r in again if r.guid != "bad"] == [r.caption for r in eager]
    assert again[3].caption is None and again[3].error.startswith("no image (bad.png")
    assert list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    logits = bb.head_logits(bb(bb.preprocess([Image.open(paths[0]).convert("RGB")]))[0])
    assert torch.allclose(logits, bb.classify(bb.preprocess([Image.open(paths[0]).convert("RGB")])), atol=1e-4)
