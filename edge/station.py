"""The operator's station: a web page served by `qc run` beside the pipeline, never in its path.

Starlette on uvicorn, in a thread of its own. The pipeline hands it nothing but references it already keeps
(the last part decided, its stats, the recent alarms); frames are encoded here, at most `web.feed_hz` times
a second, so a slow or stuck browser never slows a part. Read-only pages are open on the bind address;
every control and every review label needs an operator's token (Authorization: Bearer), compared by its
sha256 in constant time. No request names a file: images are served by a stem from the store's own index.

    GET  /                 the live page (live view, rejects, review, controls)
    GET  /api/state        counts, yield, fps, latency, gate, alarms, model card (JSON)
    GET  /api/events       the same as server-sent events, `web.feed_hz` a second
    GET  /frame.jpg        the last frame decided, its box drawn
    GET  /api/rejects      the reject store, newest first (?reason=&label=)
    GET  /rejects/STEM/frame|boxed
    POST /api/command/NAME the MQTT commands' code path (threshold, pause, resume, reload, recipe, snapshot)
    POST /api/review/STEM  {"label": CLASS | "good" | "skip"}: written into the frame's sidecar with who and when
    GET  /metrics          Prometheus;  GET /healthz
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import threading
import time
from pathlib import Path

import cv2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edge.config import WebConfig
from edge.errors import EdgeError
from edge.users import find_user, load_users, secret_line

__all__ = ["Station", "load_operators", "token_line"]

PAGE = Path(__file__).with_name("station.html")
MAX_BODY = 4096
TOKEN_ENV = "QC_WEB_TOKEN"


def token_line(name: str, token: str) -> str:
    """An operators_file line: the name and the token's sha256 (the token itself is never stored)."""
    return secret_line(name, token)


def load_operators(path: Path | None) -> dict[str, str]:
    """{name: sha256 of the token} from web.operators_file, and `admin` from QC_WEB_TOKEN."""
    return load_users(path, "web.operators_file", TOKEN_ENV, "admin")


class Station:
    """The station's app and its server thread: `start()` binds (a busy port or an open bind without tokens
    is a start-up error), `stop()` ends it."""

    def __init__(self, runtime, cfg: WebConfig, operators: dict[str, str]):
        self.rt, self.cfg, self.operators = runtime, cfg, operators
        self.page = PAGE.read_text()
        self._jpeg: tuple[int, bytes] | None = None  # (part seq, JPEG): one encoding per part shown
        self._jpeg_lock = threading.Lock()
        self.app = Starlette(routes=[
            Route("/", self.index), Route("/healthz", self.healthz), Route("/metrics", self.metrics),
            Route("/api/state", self.state), Route("/api/events", self.events), Route("/frame.jpg", self.frame),
            Route("/api/rejects", self.rejects), Route("/rejects/{stem}/{kind}", self.reject_image),
            Route("/api/command/{name}", self.command, methods=["POST"]),
            Route("/api/review/{stem}", self.review, methods=["POST"]),
        ])
        self.server = None
        self.thread: threading.Thread | None = None
        self.port = cfg.port

    # --- serving ---

    def start(self) -> Station:
        import uvicorn

        if not self.operators and not ipaddress.ip_address(socket.gethostbyname(self.cfg.bind)).is_loopback:
            raise EdgeError(f"web.bind {self.cfg.bind} opens the station beyond this machine without operator "
                            f"tokens: set web.operators_file or {TOKEN_ENV}, or bind 127.0.0.1")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.cfg.bind, self.cfg.port))
        except OSError as exc:
            sock.close()
            raise EdgeError(f"web.port {self.cfg.port} on {self.cfg.bind}: {exc.strerror} (another station, or "
                            "web.port 0 for any free port)") from None
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="station",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=5)

    @property
    def url(self) -> str:
        return f"http://{self.cfg.bind}:{self.port}/"

    # --- access ---

    def _operator(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return find_user(self.operators, header[7:].strip()) if header.startswith("Bearer ") else None

    async def _body(self, request: Request) -> dict | Response:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return JSONResponse({"ok": False, "error": f"body over {MAX_BODY} bytes"}, 413)
        raw = await request.body()
        if len(raw) > MAX_BODY:
            return JSONResponse({"ok": False, "error": f"body over {MAX_BODY} bytes"}, 413)
        try:
            payload = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return JSONResponse({"ok": False, "error": f"body is not UTF-8 JSON: {exc}"}, 400)
        if not isinstance(payload, dict):
            return JSONResponse({"ok": False, "error": "body must be a JSON object"}, 400)
        return payload

    async def _operators_request(self, request: Request) -> tuple[str, dict] | Response:
        """(operator, JSON body) of a control or a label, or the response refusing it."""
        if not self.operators:
            return JSONResponse({"ok": False, "error": f"no operators: set web.operators_file or {TOKEN_ENV}"}, 403)
        who = self._operator(request)
        if who is None:
            return JSONResponse({"ok": False, "error": "an operator's token is needed (Authorization: Bearer)"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})
        payload = await self._body(request)
        return payload if isinstance(payload, Response) else (who, payload)

    # --- pages ---

    async def index(self, request: Request) -> Response:
        return HTMLResponse(self.page)

    async def healthz(self, request: Request) -> Response:
        ok = self.rt.running.is_set() and not self.rt.stop_event.is_set() and not self.rt._stuck
        return JSONResponse({"ok": ok}, 200 if ok else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(self.rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def snapshot(self) -> dict:
        rt, stats = self.rt, self.rt.stats.snapshot()
        decided = stats["counts"]["parts"]
        card = rt.bundle.card
        latest = rt.latest[1] if rt.latest else None
        return stats | {
            "yield": round(stats["counts"]["decision"].get("pass", 0) / decided, 4) if decided else None,
            "gate": dict(rt.gate.counts), "paused": rt.paused.is_set(), "threshold": rt.threshold,
            "threshold_limits": list(rt.cfg.mqtt.threshold_limits), "alarms": list(rt.recent_alarms)[-10:],
            "model": {"name": card.name, "sha256": card.sha256, "threshold": rt.threshold, "labels": card.labels,
                      "metrics": card.metrics.get(card.quantization.get("mode", "int8"), {})},
            "latest": latest and {k: latest.get(k) for k in ("seq", "decision", "reason", "label", "score", "box")},
            "line": rt.cfg.line, "station": rt.cfg.station, "recipe": rt.model.recipe, "recipes": list(rt.cfg.recipes),
        }

    async def state(self, request: Request) -> Response:
        return JSONResponse(self.snapshot())

    async def events(self, request: Request) -> Response:
        async def stream():
            while not await request.is_disconnected():
                yield f"data: {json.dumps(self.snapshot(), default=str)}\n\n"
                await asyncio.sleep(1 / self.cfg.feed_hz)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    def _encode_latest(self) -> bytes | None:
        latest = self.rt.latest
        if latest is None or latest[0].pixels is None:
            return None
        frame, event = latest
        with self._jpeg_lock:
            if self._jpeg is None or self._jpeg[0] != event["seq"]:
                image = frame.pixels if frame.pixels.ndim == 3 else cv2.cvtColor(frame.pixels, cv2.COLOR_GRAY2BGR)
                if event.get("box"):
                    x, y, w, h = event["box"]
                    image = image.copy()
                    cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), (0, 0, 255), max(1, image.shape[1] // 160))
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
                self._jpeg = (event["seq"], buf.tobytes() if ok else b"")
            return self._jpeg[1] or None

    async def frame(self, request: Request) -> Response:
        data = await run_in_threadpool(self._encode_latest)
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def rejects(self, request: Request) -> Response:
        store = self.rt.store
        if store is None:
            return JSONResponse({"entries": [], "note": "store.dir is off"})
        reason, label = request.query_params.get("reason"), request.query_params.get("label")
        entries = await run_in_threadpool(store.entries)
        picked = [e for e in entries if (not reason or e.get("reason") == reason) and (not label or e.get("label") == label)]
        reviewed = [e["review"]["label"] for e in entries if e.get("review", {}).get("label") not in (None, "skip")]
        rejected = [e for e in entries if e.get("decision") == "reject" and e.get("review")]
        return JSONResponse({"entries": picked[:200], "labelled": {c: reviewed.count(c) for c in sorted(set(reviewed))},
                             "false_reject_share": round(sum(e["review"]["label"] == "good" for e in rejected)
                                                         / len(rejected), 4) if rejected else None})

    async def reject_image(self, request: Request) -> Response:
        store, stem, kind = self.rt.store, request.path_params["stem"], request.path_params["kind"]
        if store is None or kind not in ("frame", "boxed") or not store.has(stem):
            return Response(status_code=404)
        path = store.root / f"{stem}{'.png' if kind == 'frame' else '_box.png'}"
        return FileResponse(path) if path.is_file() else Response(status_code=404)

    # --- controls ---

    async def command(self, request: Request) -> Response:
        if isinstance(asked := await self._operators_request(request), Response):
            return asked
        reply = await run_in_threadpool(self.rt.command, request.path_params["name"], asked[1])
        return JSONResponse(reply, 200 if reply.get("ok") else 400)

    async def review(self, request: Request) -> Response:
        if isinstance(asked := await self._operators_request(request), Response):
            return asked
        who, payload = asked
        store, stem, label = self.rt.store, request.path_params["stem"], payload.get("label")
        if store is None or not store.has(stem):
            return Response(status_code=404)
        allowed = [*self.rt.bundle.labels, "skip"]
        if label not in allowed:
            return JSONResponse({"ok": False, "error": f"label must be one of {allowed}"}, 400)
        await run_in_threadpool(store.label, stem, label, who)
        return JSONResponse({"ok": True, "stem": stem, "label": label, "by": who, "at": time.time()})
