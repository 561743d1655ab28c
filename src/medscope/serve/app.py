"""``medscope serve``: a JSON API and one static page over one or more trained runs, or
ensembles (the folder ``medscope evaluate RUN RUN --out DIR`` wrote: its members' calibrated
probabilities averaged, as there).

A large upload (a whole micrograph) is tiled at the model's training scale by the rule of
``medscope.diagnosis`` (``tiles=auto|on|off``) and answered with the image-level call, the
tiles and a heat map (``medscope.serve.tiled``); slides too big to upload are read from the
folder named at start (``slides_dir``, ``medscope.serve.slidedir``), and from nowhere else.

Uploads are read into memory under a size cap before anything is parsed or decoded, decoded with
the loaders' guards (``read_image_bytes``) and never written to disk under any name. Each model
loads once; its inference runs under a per-model lock because Grad-CAM hooks the shared model.
"""

from __future__ import annotations

import base64
import hmac
import io
import logging
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from medscope.data.io import BadImageError, open_image_bytes, read_image_bytes
from medscope.diagnosis import TilePlan, tile_plan, wants_tiles
from medscope.errors import MedscopeError, first_line
from medscope.evaluate.decisions import Rules, check_abstain_below, rules_for
from medscope.novelty import (
    BLANK,
    DEGENERATE,
    UNLIKE_TRAINING,
    file_problem,
    ood_checks,
    unusual,
)
from medscope.options import TILE_MODES
from medscope.predict import check_same_labels
from medscope.predictor import Predictor, checkpoint_stem, model_outputs
from medscope.run import RunDir, read_json
from medscope.serve.slidedir import SlideDir, SlideRefused
from medscope.serve.tiled import (
    decisive_tiles,
    diagnose_reader,
    tiled_json,
)
from medscope.slides.aggregate import LOW_CONFIDENCE
from medscope.slides.readers import WSI_EXTENSIONS, PillowReader, SlideReader, open_reader

log = logging.getLogger("medscope")

STATIC = Path(__file__).with_name("static")
# Browsers send image/*; curl and scripts often send octet-stream; PACS tools application/dicom.
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream", "application/dicom")
# Room for the multipart envelope around a file of the full allowed size.
ENVELOPE_BYTES = 64 * 1024
METRIC_KEYS = ("n", "accuracy", "balanced_accuracy", "f1_macro", "roc_auc_macro", "ci",
               "calibration", "selective", "data")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                               "object-src 'none'; frame-ancestors 'none'",
}


class ServeError(Exception):
    """A request the server refuses: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass
class ServedModel:
    """One loaded run (or ensemble): its predictor(s), its evaluation figures and its
    decision rules (``medscope.evaluate.decisions``, as predict and evaluate apply them). An
    ensemble's ``predictor`` is its first member: its classes, and the one whose Grad-CAM is
    shown."""

    id: str
    source: Path
    predictor: Predictor
    metrics: dict[str, Any]
    rules: Rules
    members: tuple[Predictor, ...] = ()  # an ensemble's runs, ``predictor`` first
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def refer_below(self) -> float | None:
        """The refer-to-expert threshold; None when referral is off."""
        return self.rules.refer.threshold

    @property
    def refer_rule(self) -> str:
        return self.rules.refer.source

    @property
    def temperature(self) -> float | None:
        """The run's temperature; None for an ensemble (each member applies its own)."""
        if self.members:
            return None
        # Predictor.temperature arrives with calibration; until then probabilities are raw.
        return float(getattr(self.predictor, "temperature", 1.0))

    @property
    def name(self) -> str:
        return "+".join(p.meta.get("model", "?") for p in self.members or (self.predictor,))

    def info(self) -> dict[str, Any]:
        p = self.predictor
        info = {"id": self.id, "name": self.name, "run": str(self.source),
                "classes": p.classes, "img_size": p.img_size, "in_chans": p.in_chans,
                "multilabel": p.multilabel, "temperature": self.temperature,
                "refer_below": self.refer_below, "refer_rule": self.refer_rule,
                "heatmap": gradcam_available(), "metrics": self.metrics,
                "tiling": self.tiling()}
        if self.members:
            info["members"] = [{"name": m.meta.get("model", "?"), "img_size": m.img_size,
                                "temperature": float(getattr(m, "temperature", 1.0))}
                               for m in self.members]
        return info

    def tiling(self) -> dict[str, Any] | None:
        """The training scale large images are cut at (None: this model never tiles)."""
        plan = self.plan("auto")
        return None if plan is None else {"tile_px": plan.tile_px, "stride_px": plan.stride_px,
                                          "mpp": plan.mpp}

    def plan(self, tiles: str) -> TilePlan | None:
        """How ``tiles`` cuts this model's large images (None: never tiled)."""
        try:
            return tile_plan(list(self.members or (self.predictor,)), tiles)
        except MedscopeError as exc:  # "--tiles on: <reason>; give --tile-size ...": CLI words
            reason = first_line(exc).split(": ", 1)[-1].split(";")[0]
            raise ServeError(400, f"tiles={tiles}: {reason}") from None

    def analyse_upload(self, data: bytes, tiles: str = "auto",
                       with_heatmap: bool = True) -> dict[str, Any]:
        """An upload: tiled when large (the rule of ``medscope.diagnosis``), else whole."""
        plan = self.plan(tiles)
        if plan is None or not wants_tiles(io.BytesIO(data), plan, tiles):
            return {**self.predict(data, with_heatmap), "tiled": False}
        try:
            image = open_image_bytes(data)
        except BadImageError as exc:
            raise ServeError(400, f"upload is not a usable image: {exc}") from None
        return self.analyse_tiled(PillowReader("upload", image=image), plan, "upload",
                                  with_heatmap)

    def analyse_file(self, path: Path, name: str, tiles: str = "auto", with_heatmap: bool = True,
                     max_whole_bytes: int = 2**26) -> dict[str, Any]:
        """A file of the slides folder (``name``: as listed; the only path a client sees)."""
        plan = self.plan(tiles)
        if plan is None or not wants_tiles(path, plan, tiles):
            if path.suffix.lower() in WSI_EXTENSIONS:
                why = "tiles=off" if tiles == "off" else "this model records no training scale"
                raise ServeError(400, f"{name}: a whole-slide image is analysed only in tiles "
                                      f"({why})")
            if path.stat().st_size > max_whole_bytes:
                raise ServeError(413, f"{name}: too large to analyse whole; use tiles=on")
            return {**self.predict(path.read_bytes(), with_heatmap), "tiled": False,
                    "image": {"name": name}}
        try:
            with open_reader(path) as reader:
                return self.analyse_tiled(reader, plan, name, with_heatmap)
        except MedscopeError as exc:  # a corrupt or truncated slide: one line, no server path
            raise ServeError(400, first_line(exc).replace(str(path), name)) from None

    def analyse_tiled(self, reader: SlideReader, plan: TilePlan, name: str,
                      with_images: bool = True) -> dict[str, Any]:
        """One large image in tiles: the call, the tiles, the overlay, the decisive tiles."""
        with self.lock:
            result = diagnose_reader(self.members or (self.predictor,), reader, plan)
        body = tiled_json(result, self.rules, name)
        body["decisive"] = decisive_tiles(reader, result)
        body["model"] = {"id": self.id, "name": self.name, "temperature": self.temperature}
        if not with_images:  # heatmap=false: the figures only, a small answer for scripts
            body.update(overlay_png_base64=None, thumbnail_jpeg_base64=None)
            for tile in body["decisive"]:
                tile["jpeg_base64"] = None
        return body

    def predict(self, data: bytes, with_heatmap: bool = True) -> dict[str, Any]:
        p = self.predictor
        members = self.members or (p,)
        try:
            # Each member sees the upload at its own size, as in ``medscope evaluate``.
            views = {(m.img_size, m.in_chans): read_image_bytes(data, m.img_size, m.in_chans)
                     for m in members}
        except BadImageError as exc:
            raise ServeError(400, f"upload is not a usable image: {exc}") from None
        pixels = views[(p.img_size, p.in_chans)]
        checks = ood_checks(members)  # the out-of-distribution check, as predict applies it
        with self.lock:
            outs = [model_outputs(m, views[(m.img_size, m.in_chans)][None], 1,
                                  features=c is not None)
                    for m, c in zip(members, checks, strict=True)]
            probs = np.mean([o[0][0] for o in outs], axis=0)
            top = int(probs.argmax())
            heat = heatmap_png(p, pixels, top) if with_heatmap else None
        flags = unusual(checks, [o[1] for o in outs])
        odd = flags is not None and bool(flags[0])
        reason = file_problem(io.BytesIO(data)) or (UNLIKE_TRAINING if odd else None)
        result = {**self.decide(probs, reason),
                  "probabilities": {c: float(x) for c, x in zip(p.classes, probs, strict=True)},
                  "model": {"id": self.id, "name": self.name,
                            "temperature": self.temperature}}
        if heat is not None:
            result["heatmap_png_base64"] = base64.b64encode(heat).decode("ascii")
        return result

    def decide(self, probs: np.ndarray, reason: str | None = None) -> dict[str, Any]:
        """Label, confidence and referral of one image's probabilities, as ``medscope predict``
        decides: ``reason`` (``medscope.novelty``: blank, degenerate, unlike the training
        images) refers it whatever its confidence, and a blank or degenerate image gets no
        label. ``refer_to_expert`` is None (JSON null) when referral is off and no reason."""
        refer = self.rules.refer_to_expert(probs[None])
        low = refer is not None and bool(refer[0])
        return {"label": "" if reason in (BLANK, DEGENERATE) else self.rules.labels(probs[None])[0],
                "confidence": float(self.rules.confidence(probs[None])[0]),
                "refer_to_expert": True if reason else (None if refer is None else low),
                "refer_reason": reason or (LOW_CONFIDENCE if low else None),
                "refer_below": self.refer_below}


def gradcam_available() -> bool:
    try:
        from medscope.explain import gradcam  # noqa: F401
    except ImportError:
        return False
    return True


def heatmap_png(predictor: Predictor, pixels: np.ndarray, target: int) -> bytes | None:
    """The Grad-CAM overlay of the predicted class as PNG bytes (None without medscope.explain)."""
    try:
        from medscope.explain.gradcam import heatmap, overlay_png
    except ImportError:
        return None
    return overlay_png(pixels, heatmap(predictor, pixels, target=target))


def run_metrics(source: Path) -> dict[str, Any]:
    """The headline figures of the run's metrics.json (empty when the run has none)."""
    path = RunDir(source).metrics if source.is_dir() else None
    if path is None or not path.is_file():
        return {}
    metrics = read_json(path)
    return {k: metrics[k] for k in METRIC_KEYS if k in metrics}


def model_id(source: Path) -> str:
    """The run folder's name; for a bare checkpoint, its run's folder (or its own name)."""
    if source.is_dir():
        return source.resolve().name
    stem = checkpoint_stem(source)
    return stem.parent.parent.name if stem.parent.name == "checkpoints" else stem.name


def load_models(runs: Sequence[Path | str], abstain_below: float | None = None,
                device: str = "auto") -> dict[str, ServedModel]:
    """Every run loaded once, by id (folder name; repeats get -2, -3 …), in the given order."""
    if not runs:
        raise MedscopeError("serve: give at least one run directory")
    check_abstain_below(abstain_below)
    # Here, not at import: evaluate.ensemble pulls in the plotting code a server never uses.
    from medscope.workflows.ensemble import member_runs

    models: dict[str, ServedModel] = {}
    for source in map(Path, runs):
        mid = unique(model_id(source), models)
        members = member_runs(source)  # None: a run, not an ensemble
        if members is not None:
            models[mid] = _served_ensemble(mid, source, members, abstain_below, device)
            continue
        predictor = Predictor.load(source, device=device)
        models[mid] = ServedModel(mid, source, predictor, run_metrics(source),
                                  rules_for([predictor.meta], abstain_below))
    return models


def _served_ensemble(mid: str, source: Path, runs: Sequence[Path], abstain_below: float | None,
                     device: str) -> ServedModel:
    for run in runs:
        if not run.exists():
            raise MedscopeError(f"{source}: ensemble member {run} not found (looked for it "
                                "relative to the ensemble folder and to this one)")
    members = tuple(Predictor.load(run, device=device) for run in runs)
    check_same_labels(runs, members)
    rules = rules_for([m.meta for m in members], abstain_below,
                      ensemble_metrics=read_json(RunDir(source).metrics))
    return ServedModel(mid, source, members[0], run_metrics(source), rules, members=members)


def unique(name: str, taken) -> str:
    """``name``, or ``name-2``, ``name-3`` … when already taken."""
    candidates = (name if i == 1 else f"{name}-{i}" for i in range(1, len(taken) + 2))
    return next(c for c in candidates if c not in taken)


@dataclass(frozen=True)
class Upload:
    """An uploaded image's bytes and the form's ``tiles`` field (None when not sent)."""

    data: bytes
    tiles: str | None = None


async def read_upload(request: Request, max_file_bytes: int) -> Upload:
    """The ``file`` part of a multipart request, refused (413) past the cap before parsing."""
    ctype = request.headers.get("content-type", "").lower()
    if not ctype.startswith("multipart/form-data"):
        raise ServeError(415, f"content type {ctype or 'none'!r}: send multipart/form-data "
                              "with the image in a 'file' field")
    too_large = ServeError(413, f"upload larger than {max_file_bytes / 2**20:.3g} MB "
                                "(--max-upload-mb)")
    body = await _read_body(request, max_file_bytes + ENVELOPE_BYTES, too_large)
    parser = MultiPartParser(request.headers, _once(body), max_files=1, max_fields=8)
    parser.spool_max_size = len(body) + 1  # the part stays in memory: it fits by now
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ServeError(400, f"malformed multipart body: {exc.message}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ServeError(400, "no 'file' field in the form")
    part_type = (upload.content_type or "application/octet-stream").lower()
    if not part_type.startswith(ACCEPTED_PART_TYPES):
        raise ServeError(415, f"file of type {part_type!r}: upload an image")
    data = await upload.read()
    await upload.close()
    if len(data) > max_file_bytes:
        raise too_large
    tiles = form.get("tiles")
    return Upload(data, tiles if isinstance(tiles, str) else None)


async def _read_body(request: Request, max_body: int, too_large: ServeError) -> bytes:
    """The request body, refused as soon as it (or its declared length) passes ``max_body``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_body:
            raise too_large
    return bytes(body)


def tiles_option(query: str | None, form: str | None = None) -> str:
    """The ``tiles`` option of a request (the query wins over the form), checked."""
    tiles = query or form or "auto"
    if tiles not in TILE_MODES:
        raise ServeError(400, f"tiles {tiles!r}: choose from {', '.join(TILE_MODES)}")
    return tiles


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def token_checker(token: str | None):
    """A dependency refusing (401) requests without ``Authorization: Bearer <token>``."""
    expected = token.encode() if token else None

    def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 expected):
            raise ServeError(401, "missing or wrong bearer token",
                             {"WWW-Authenticate": "Bearer"})

    return check


def create_app(models: dict[str, ServedModel], *, max_upload_mb: float = 20.0,
               token: str | None = None, cors_origins: Sequence[str] = (),
               slides_dir: Path | str | None = None) -> FastAPI:
    """The FastAPI app: ``/`` page, ``/api/models``, ``/api/model``, ``/api/predict``,
    ``/healthz``; with ``slides_dir``, ``/api/slides`` and ``/api/slide`` over the images and
    slides in that folder (and nowhere else). CORS stays off unless origins are given."""
    if not models:
        raise MedscopeError("serve: no model to serve")
    if max_upload_mb <= 0:
        raise MedscopeError(f"--max-upload-mb {max_upload_mb}: must be positive")
    slides = None if slides_dir is None else SlideDir.open(slides_dir)
    # No /docs: its page loads scripts from a CDN, and the served page must work offline.
    app = FastAPI(title="medscope", docs_url=None, redoc_url=None)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"], allow_headers=["Authorization"])
    add_error_handlers(app)
    add_security_headers(app)
    add_routes(app, models, max_upload_mb=max_upload_mb, token=token)
    add_slide_routes(app, models, slides, max_whole_bytes=int(max_upload_mb * 2**20),
                     token=token)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.token_required = token is not None
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal as ``{"error": "one line"}`` with its status."""

    @app.exception_handler(ServeError)
    async def _refused(request: Request, exc: ServeError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"}, 400)


def add_security_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def _security_headers(request: Request, call_next):
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response


def add_routes(app: FastAPI, models: dict[str, ServedModel], *, max_upload_mb: float,
               token: str | None) -> None:
    """The page and the JSON API over ``models`` (the first is the default)."""
    max_file_bytes = int(max_upload_mb * 2**20)
    default = next(iter(models))
    auth = [Depends(token_checker(token))]

    def pick(model: str | None) -> ServedModel:
        return pick_model(models, model)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(models)}

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        """What the page needs before it may call anything else."""
        return {"token_required": token is not None, "max_upload_mb": max_upload_mb,
                "tiles": list(TILE_MODES), "slides": bool(getattr(app.state, "slides", None))}

    @app.get("/api/models", dependencies=auth)
    def list_models() -> dict[str, Any]:
        return {"default": default,
                "models": [{"id": m.id, "name": m.name, "classes": m.predictor.classes}
                           for m in models.values()]}

    @app.get("/api/model", dependencies=auth)
    def model_info(model: str | None = None) -> dict[str, Any]:
        return pick(model).info()

    @app.post("/api/predict", dependencies=auth)
    async def predict(request: Request, model: str | None = None, heatmap: bool = True,
                      tiles: str | None = None) -> dict[str, Any]:
        served = pick(model)
        tiles_option(tiles)  # a wrong option is refused before the upload is read
        upload = await read_upload(request, max_file_bytes)
        mode = tiles_option(tiles, upload.tiles)
        return await run_in_threadpool(served.analyse_upload, upload.data, mode, heatmap)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")


def pick_model(models: dict[str, ServedModel], model: str | None) -> ServedModel:
    """The model a request names (the first loaded when it names none), else 404."""
    if model is None:
        return next(iter(models.values()))
    if model not in models:
        raise ServeError(404, f"unknown model {model!r}; loaded: {', '.join(models)}")
    return models[model]


def add_slide_routes(app: FastAPI, models: dict[str, ServedModel], slides: SlideDir | None, *,
                     max_whole_bytes: int, token: str | None) -> None:
    """``/api/slides`` (the listing) and ``/api/slide?name=`` (one analysed): files of the
    slides folder by their listed name; a name leading outside it is refused unread."""
    app.state.slides = slides
    auth = [Depends(token_checker(token))]

    def folder() -> SlideDir:
        if slides is None:
            raise ServeError(404, "no slides folder: start the server with --slides DIR")
        return slides

    @app.get("/api/slides", dependencies=auth)
    def list_slides() -> dict[str, Any]:
        return folder().listing()

    @app.post("/api/slide", dependencies=auth)
    async def analyse_slide(name: str, model: str | None = None, heatmap: bool = True,
                            tiles: str | None = None) -> dict[str, Any]:
        served, mode = pick_model(models, model), tiles_option(tiles)
        try:
            path = folder().resolve(name)
        except SlideRefused as exc:
            raise ServeError(exc.status, exc.message) from None
        return await run_in_threadpool(served.analyse_file, path, name, mode, heatmap,
                                       max_whole_bytes)


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run ``app`` under uvicorn until interrupted."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not app.state.token_required:
        log.warning("serving on %s without --token: anyone who can reach it may use it", host)
    # limit_concurrency: beyond it clients get 503 instead of the server holding unbounded
    # uploads in memory.
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False,
                limit_concurrency=32)
