"""python -m generate.app: a local web page to pick a model, generate, listen and download (standard library only)."""

from __future__ import annotations

import base64
import binascii
import json
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from generate.api import Model, list_models
from generate.app_page import PAGE
from generate.cli import main
from generate.config import AppConfig, to_object
from generate.errors import UserError
from generate.music import audio

FILE_NAME = re.compile(r"^[0-9]+/[A-Za-z0-9_.-]+\.(mid|musicxml|wav|png)$")  # what /files/ serves, nothing else
CONTENT_TYPES = {"mid": "audio/midi", "musicxml": "application/vnd.recordare.musicxml+xml", "wav": "audio/wav",
                 "png": "image/png"}
MAX_BODY = 16 * 1024 * 1024  # a request body (a primer is base64 in JSON) larger than this is refused


@dataclass
class App:
    """What the handlers share: the settings, the models loaded so far, and one generation at a time."""

    settings: AppConfig
    out_dir: Path
    models: dict[str, Model] = field(default_factory=dict)
    listed: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)  # generation uses every core: queue requests
    runs: int = 0

    def model(self, path: str) -> Model:
        """A listed model by its path, loaded once; anything not in the list is refused."""
        if path not in {m["path"] for m in self.listed}:
            raise UserError(f"model {path!r} is not one of the listed models; reload the page")
        if path not in self.models:
            self.models[path] = Model.from_pretrained(path, device=self.settings.device.value)
        return self.models[path]

    def new_run(self) -> Path:
        self.runs += 1
        run = self.out_dir / str(self.runs)
        run.mkdir(parents=True, exist_ok=True)
        return run


def _number(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """A form field as int or float; a value that is not one names the field."""
    value = body.get(key, default)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{key}={value!r} is not a number") from None
    if kind is int and not number.is_integer():
        raise UserError(f"{key}={value!r} is not a whole number")
    return kind(number)


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling settings of a request, typed like the CLI's (checks of their ranges are the library's)."""
    return {"temperature": _number(body, "temperature", float, 1.0), "top_k": _number(body, "top_k", int, 0),
            "top_p": _number(body, "top_p", float, 1.0), "length": _number(body, "length", int, 200),
            "seed": _number(body, "seed", int, 1337)}


def text_events(app: App, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Each sample's text as it is generated: sample i is Model.stream with seed + i (the CLI's seed=seed+i)."""
    try:
        settings, count = sampling(body), _number(body, "num_samples", int, 1)
        if not 1 <= count <= 16:
            raise UserError(f"num_samples={count} must be 1..16 in the app")
        with app.lock:
            model = app.model(str(body.get("model", "")))
            for i in range(count):
                for piece in model.stream(str(body.get("prompt", "")), **{**settings, "seed": settings["seed"] + i}):
                    yield {"sample": i, "text": piece}
                yield {"sample": i, "text": "", "done": True}
    except UserError as err:
        yield {"error": str(err)}


def music_samples(app: App, body: dict[str, Any]) -> dict[str, Any]:
    """Generate pieces and write each as .mid, .musicxml, .wav and .png, as `python -m generate.sample` does."""
    settings, count = sampling(body), _number(body, "num_samples", int, 1)
    if not 1 <= count <= 16:
        raise UserError(f"num_samples={count} must be 1..16 in the app")
    instrument = str(body.get("instrument", "") or "")
    audio.program_for(instrument)  # a bad instrument fails before any generation
    with app.lock:
        model = app.model(str(body.get("model", "")))
        run = app.new_run()
        primer = None
        if body.get("primer"):
            name = Path(str(body.get("primer_name") or "primer.mid")).name
            try:
                data = base64.b64decode(str(body["primer"]), validate=True)
            except (binascii.Error, ValueError):
                raise UserError(f"the primer {name} did not arrive intact; upload it again") from None
            primer = run / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            primer.write_bytes(data)
        pieces = model.sample(primer=primer, num_samples=count, **settings)
        samples = []
        for i, piece in enumerate(pieces):
            stem = run / f"sample_{i}"
            piece.write(stem, instrument=instrument, soundfont=app.settings.soundfont)
            url = f"/files/{run.name}/{stem.name}"
            seconds = piece.piece.in_seconds(piece.qpm).duration
            samples.append({"name": stem.name, "notes": len(piece.piece.notes), "seconds": seconds,
                            **{kind: f"{url}.{kind}" for kind in ("mid", "musicxml", "wav", "png")}})
    return {"samples": samples, "audio": audio.describe(app.settings.soundfont)}


class Handler(BaseHTTPRequestHandler):
    """GET / (the page), /api/models, /files/...; POST /api/text (streamed lines of JSON), /api/music (JSON)."""

    app: App  # set on the subclass that serve() makes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # one line per request would bury the URL the user needs

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, value: Any, status: int = 200) -> None:
        self.send(status, json.dumps(value).encode(), "application/json")

    def do_GET(self) -> None:
        if self.path == "/":
            self.send(200, PAGE.encode(), "text/html; charset=utf-8")
        elif self.path == "/api/models":
            self.send_json({"models": self.app.listed, "audio": audio.describe(self.app.settings.soundfont),
                            "instruments": ["piano", *[n for n in audio.INSTRUMENTS if n != "piano"]]})
        elif self.path.startswith("/files/") and FILE_NAME.match(self.path[len("/files/"):]):
            path = self.app.out_dir / self.path[len("/files/"):]
            if not path.is_file():
                self.send(404, b"not found", "text/plain")
                return
            self.send(200, path.read_bytes(), CONTENT_TYPES[path.suffix[1:]])
        else:
            self.send(404, b"not found", "text/plain")

    def read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise UserError(f"the request is over {MAX_BODY // 2**20} MB; use a smaller primer")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            raise UserError("the request is not JSON; use the page") from None
        if not isinstance(body, dict):
            raise UserError("the request is not a JSON object; use the page")
        return body

    def do_POST(self) -> None:
        try:
            body = self.read_body()
            if self.path == "/api/music":
                self.send_json(music_samples(self.app, body))
                return
            if self.path != "/api/text":
                self.send(404, b"not found", "text/plain")
                return
        except UserError as err:  # the same one line the CLI prints after "error: "
            self.send_json({"error": str(err)}, 400)
            return
        # Streamed: no Content-Length, one JSON object per line, flushed as each block of text is generated.
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        for event in text_events(self.app, body):
            self.wfile.write(json.dumps(event).encode() + b"\n")
            self.wfile.flush()


def serve(settings: AppConfig) -> ThreadingHTTPServer:
    """Bind the app (port 0: a free port) and list the models; the caller runs serve_forever()."""
    out_dir = Path(settings.out_dir) if settings.out_dir else Path(tempfile.mkdtemp(prefix="generate-app-"))
    app = App(settings, out_dir, listed=list_models(settings.checkpoints_dir))
    if not app.listed:
        raise UserError(f"no models: no shipped ones and none under {settings.checkpoints_dir}/*/best.pt")
    handler = type("BoundHandler", (Handler,), {"app": app})
    try:
        return ThreadingHTTPServer((settings.host, settings.port), handler)
    except OSError as err:
        raise UserError(f"cannot listen on {settings.host}:{settings.port} ({err.strerror}); "
                        "choose another with port=N (port=0: any free one)") from None


def run_app(cfg: Any) -> None:
    """python -m generate.app: serve until Ctrl-C, printing the URL to open."""
    settings = to_object(cfg, AppConfig)
    sound = audio.describe(settings.soundfont)  # a wrong soundfont= path fails before anything starts
    server = serve(settings)
    host, port = server.server_address[:2]
    print(f"generate app: open http://{host}:{port}/ (files go to {server.RequestHandlerClass.app.out_dir}; "
          "Ctrl-C stops)", flush=True)
    print(f"audio: {sound}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main("app", run_app)
