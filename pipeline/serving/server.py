"""``serve``: an exported student folder over HTTP (Starlette on uvicorn), run by ``deploy.ExportedStudent`` alone.

The server reads only the exported folder (``config.json``, ``tokenizer.json``, one ONNX variant): no params file,
no torch. Endpoints:

* ``POST /predict`` with ``{"texts": ["...", ...]}``; a sentence-pair task takes the second texts as a parallel list,
  ``{"texts": [...], "texts_b": [...]}`` (same length, row ``i`` is the pair ``(texts[i], texts_b[i])``). Answer:
  ``{"predictions": [...]}`` in input order, one ``{"label": ..., "probabilities": {label: p, ...}}`` per text (a
  regression task: ``{"score": x}``).
* ``GET /health``: ``{"status": "ok"}`` with the task, variant, labels, limits and batching counters.

A malformed request gets a 4xx JSON answer naming every bad field, ``{"errors": [{"field": "texts[2]", "message":
"empty text"}, ...]}``: 400 for a body that is not a JSON object, 413 for a body over ``max_body_bytes``, 422 for
a missing, unknown or mistyped field, an empty list or text, more than ``max_texts`` texts, a text over
``max_chars`` characters or over the model's ``max_length`` tokens (unless ``truncate``), and a pair task without
``texts_b`` (or a single-text task with it). Unknown paths and methods are 404/405 in the same shape.

Micro-batching: requests are tokenised and validated as they arrive, then queued; one worker takes every queued
request (up to ``max_batch`` texts, waiting ``batch_window_ms`` for more) and scores them together in a worker thread,
so the event loop keeps reading requests meanwhile: the batch's texts sorted by length, in onnxruntime calls of
``call_batch`` texts (one call when ``call_batch >= max_batch``; smaller calls pad short texts less, and the LSTM
pays for every padded step). Each text is scored with its own
length (padding is masked), so a request's answer equals its answer scored alone (fp32 and table variants; int8
quantises activations per call, so its probabilities move within quantisation noise with the batch).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.data.tasks import TASKS
from pipeline.serving import deploy

TEXTS, TEXTS_B = "texts", "texts_b"
Ids = list[list[list[int]]]  # token ids per model input, per row (as ``ExportedStudent.logits_from_ids`` reads them)


@dataclass(frozen=True)
class ServerSettings:
    """Request limits, micro-batching and onnxruntime threads."""

    max_texts: int = 64  # texts per request
    max_chars: int = 2_000  # characters per text
    max_body_bytes: int = 1_000_000
    max_batch: int = 64  # texts scored together (a larger request runs alone)
    call_batch: int = 16  # texts per onnxruntime call within them, sorted by length
    batch_window_ms: float = 1.0  # how long the worker waits for more requests before a call
    threads: int | None = 1  # onnxruntime intra-op threads (None: its default, all cores)
    truncate: bool = False  # cut texts over the model's max_length instead of answering 422


class RequestError(Exception):
    """A malformed request: the HTTP status and one ``{"field", "message"}`` per problem."""

    def __init__(self, status: int, errors: list[dict[str, str]]) -> None:
        super().__init__(errors)
        self.status = status
        self.errors = errors


def field_error(status: int, field: str, message: str) -> RequestError:
    return RequestError(status, [{"field": field, "message": message}])


def is_pair_model(config: dict[str, Any]) -> bool:
    """Whether an exported student reads sentence pairs: ``config["pair"]``, else (older exports) two separate
    inputs, else the built-in task of that name."""
    if "pair" in config:
        return bool(config["pair"])
    if config["encoding"] == deploy.SEPARATE_ENCODING:
        return len(config["inputs"]) == 2
    if config["task"] in TASKS:
        return TASKS[config["task"]].is_pair
    raise ValueError(f"config.json of task {config['task']!r} does not say whether it reads pairs: re-export it")


JSON_TYPES = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}


def _type_name(value: object) -> str:
    return JSON_TYPES.get(type(value), "null")  # json.loads makes nothing else


def _is_unicode(text: str) -> bool:
    """False for a string with lone surrogates (JSON allows their escapes; the tokenizer cannot read them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ServedModel:
    """An exported student with the request checks and answers of ``/predict``."""

    def __init__(self, folder: Path, variant: str | None, settings: ServerSettings) -> None:
        self.student = deploy.ExportedStudent(folder, variant, settings.threads)  # None: the folder's default
        self.settings = settings
        self.task: str = self.student.config["task"]
        self.pair = is_pair_model(self.student.config)
        self.labels = self.student.labels

    def parse(self, body: bytes) -> tuple[list[str], list[str] | None]:
        """The texts (and second texts) of a ``/predict`` body; RequestError naming every bad field."""
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise field_error(400, "body", f"not valid JSON ({exc})") from None
        except RecursionError:
            raise field_error(400, "body", "JSON nested too deeply") from None
        if not isinstance(request, dict):
            raise field_error(400, "body", f"expected a JSON object with {TEXTS!r}, got a {_type_name(request)}")
        fields = [TEXTS, TEXTS_B] if self.pair else [TEXTS]
        errors = [{"field": key, "message": f"unknown field; expected {' and '.join(map(repr, fields))}"}
                  for key in request if key not in fields]  # fmt: skip
        if TEXTS_B in request and not self.pair:
            errors = [{"field": TEXTS_B, "message": f"{self.task} is a single-text task: send {TEXTS!r} only"}]
        columns = {name: self._texts(request, name, errors) for name in fields}
        if self.pair and columns[TEXTS] is not None and columns[TEXTS_B] is not None:
            if len(columns[TEXTS_B]) != len(columns[TEXTS]):
                message = f"{len(columns[TEXTS_B])} texts, expected one per text of {TEXTS!r} ({len(columns[TEXTS])})"
                errors.append({"field": TEXTS_B, "message": message})
        if errors:
            raise RequestError(422, errors)
        return columns[TEXTS], columns.get(TEXTS_B)  # type: ignore[return-value]

    def _texts(self, request: dict[str, Any], name: str, errors: list[dict[str, str]]) -> list[str] | None:
        """``request[name]`` if it is a valid list of texts; otherwise None, with its problems added to ``errors``."""
        limits = self.settings
        if name not in request:
            hint = f": {self.task} is a sentence-pair task" if name == TEXTS_B else ""
            errors.append({"field": name, "message": f"missing{hint}"})
            return None
        texts = request[name]
        problem = None
        if not isinstance(texts, list):
            problem = f"expected a list of strings, got a {_type_name(texts)}"
        elif not texts:
            problem = "empty list"
        elif len(texts) > limits.max_texts:
            problem = f"{len(texts)} texts, more than the limit of {limits.max_texts} per request"
        if problem is not None:
            errors.append({"field": name, "message": problem})
            return None
        before = len(errors)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                problem = f"expected a string, got a {_type_name(text)}"
            elif not text.strip():
                problem = "empty text"
            elif len(text) > limits.max_chars:
                problem = f"{len(text)} characters, more than the limit of {limits.max_chars}"
            elif not text.isascii() and not _is_unicode(text):
                problem = "not valid Unicode text (a lone surrogate escape such as \\ud800)"
            else:
                continue
            errors.append({"field": f"{name}[{i}]", "message": problem})
        return texts if len(errors) == before else None

    def token_ids(self, text_a: list[str], text_b: list[str] | None) -> Ids:
        """Token ids of the texts; RequestError naming every text over the model's ``max_length`` tokens (unless
        ``truncate``, which cuts them as ``ExportedStudent.logits`` does)."""
        ids = self.student.encode(text_a, text_b, truncate=self.settings.truncate)
        if self.settings.truncate:
            return ids
        maximum = self.student.max_length
        names = [TEXTS] if self.student.joint else [TEXTS, TEXTS_B][: len(ids)]  # joint: one sequence per pair
        errors = [
            {"field": f"{name}[{row}]", "message": f"{len(tokens)} tokens, more than the model's maximum of {maximum}"}
            for name, column in zip(names, ids)
            for row, tokens in enumerate(column)
            if len(tokens) > maximum
        ]
        if errors:
            raise RequestError(422, errors)
        return ids

    def predictions(self, logits: np.ndarray) -> list[dict[str, Any]]:
        """One answer per row: label and class probabilities, or the score (regression)."""
        if self.labels is None:
            return [{"score": float(row[0])} for row in logits]
        labels = self.labels
        return [
            {"label": labels[int(p.argmax())], "probabilities": dict(zip(labels, p.tolist()))}
            for p in deploy.softmax(logits.astype(np.float64))
        ]


@dataclass
class _Job:
    ids: Ids
    rows: int
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Scores queued requests together in one worker thread: up to ``max_batch`` texts, sorted by length, in
    onnxruntime calls of ``call_batch`` texts."""

    def __init__(self, student: deploy.ExportedStudent, max_batch: int, window_s: float, call_batch: int) -> None:
        self.student = student
        self.max_batch = max_batch
        self.window_s = window_s
        self.call_batch = call_batch
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.batches = 0  # batches scored
        self.rows = 0  # texts (or pairs) scored

    async def logits(self, ids: Ids) -> np.ndarray:
        """The logits of ``ids`` (one row per text), scored with whatever else is queued."""
        job = _Job(ids, len(ids[0]), asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def run(self) -> None:
        """The worker: run until cancelled."""
        loop = asyncio.get_running_loop()
        held: _Job | None = None  # a job that did not fit the previous batch
        with ThreadPoolExecutor(1, thread_name_prefix="onnxruntime") as executor:
            while True:
                jobs = [held or await self.queue.get()]
                held = self._fill(jobs)
                if held is None and self.window_s > 0 and sum(job.rows for job in jobs) < self.max_batch:
                    await asyncio.sleep(self.window_s)
                    held = self._fill(jobs)
                jobs = [job for job in jobs if not job.future.done()]  # a client that went away was cancelled
                if not jobs:
                    continue
                try:
                    logits = await loop.run_in_executor(executor, self._score, jobs)
                except Exception as exc:  # answered as a 500 by every request of the batch
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(exc)
                    continue
                start = 0
                for job in jobs:
                    if not job.future.done():
                        job.future.set_result(logits[start : start + job.rows])
                    start += job.rows

    def _fill(self, jobs: list[_Job]) -> _Job | None:
        """Move queued jobs into ``jobs`` up to ``max_batch`` rows; return the first that does not fit."""
        rows = sum(job.rows for job in jobs)
        while not self.queue.empty():
            job = self.queue.get_nowait()
            if rows + job.rows > self.max_batch:
                return job
            jobs.append(job)
            rows += job.rows
        return None

    def _score(self, jobs: Sequence[_Job]) -> np.ndarray:
        columns = len(jobs[0].ids)
        ids = [[row for job in jobs for row in job.ids[k]] for k in range(columns)]
        rows = len(ids[0])
        logits = self.student.logits_from_ids(ids, batch_size=self.call_batch)  # sorts by length, then calls
        self.batches += 1
        self.rows += rows
        return logits


def _json(content: object, status: int = 200) -> Response:
    return Response(json.dumps(content, separators=(",", ":")), status, media_type="application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body; RequestError (413) as soon as it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise field_error(413, "body", f"{declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise field_error(413, "body", f"more than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(folder: Path, variant: str | None = None, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI app serving ``variant`` (None: the folder's default) of the exported student in ``folder``."""
    settings = settings or ServerSettings()
    model = ServedModel(folder, variant, settings)
    batcher = MicroBatcher(model.student, settings.max_batch, settings.batch_window_ms / 1000, settings.call_batch)
    counters = {"requests": 0, "rejected": 0}

    async def predict(request: Request) -> Response:
        counters["requests"] += 1
        try:
            text_a, text_b = model.parse(await read_body(request, settings.max_body_bytes))
            ids = model.token_ids(text_a, text_b)
        except RequestError as exc:
            counters["rejected"] += 1
            return _json({"errors": exc.errors}, exc.status)
        return _json({"predictions": model.predictions(await batcher.logits(ids))})

    async def health(request: Request) -> Response:
        return _json({
            "status": "ok", "task": model.task, "variant": model.student.variant, "pair": model.pair,
            "labels": model.labels, "max_length": model.student.max_length, "limits": asdict(settings),
            "stats": {**counters, "batches": batcher.batches, "rows": batcher.rows},
        })  # fmt: skip

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _json({"errors": [{"field": "path", "message": f"{request.method} {request.url.path}: {exc.detail}"}]},
                     exc.status_code)  # fmt: skip

    async def server_error(request: Request, exc: Exception) -> Response:
        return _json({"errors": [{"field": None, "message": f"internal error: {type(exc).__name__}"}]}, 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker = asyncio.create_task(batcher.run())
        try:
            yield
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    routes = [Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"])]
    handlers = {HTTPException: http_error, Exception: server_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]


def export_folder(model_dir: Path | None, task: str | None, default: Path | None) -> Path:
    """The folder to serve: ``model_dir``, else ``default`` (the task's export folder); it must hold a config.json of
    ``task`` when both are given."""
    folder = model_dir or default
    if folder is None:
        raise ValueError("give --task (serves models/export/<task>) or --model-dir")
    if not (folder / deploy.CONFIG_FILE).is_file():
        hint = f" (run: python -m pipeline export --task {task})" if model_dir is None else ""
        raise FileNotFoundError(f"{folder / deploy.CONFIG_FILE}: no exported student{hint}")
    exported_task = deploy.read_config(folder)["task"]
    if task is not None and exported_task != task.lower():
        raise ValueError(f"{folder}: exported for task {exported_task!r}, not {task!r}")
    return folder


def serve(folder: Path, variant: str | None, settings: ServerSettings, host: str, port: int) -> None:
    """Serve until interrupted: one uvicorn worker (uvloop and httptools when installed), no access log.

    The process runs two busy threads, the event loop (HTTP, JSON, tokenising) and the onnxruntime worker, so the
    tokenizer's own thread pool is off unless ``TOKENIZERS_PARALLELISM`` says otherwise (it oversubscribes the
    cores under load)."""
    import uvicorn

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    app = create_app(folder, variant, settings)
    uvicorn.run(app, host=host, port=port, workers=1, access_log=False, log_level="info")
