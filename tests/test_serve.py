"""``python -m pipeline serve``: answers equal to ``deploy.ExportedStudent``'s for single texts, pairs and scores,
micro-batched requests answered as if scored alone, a 4xx JSON naming the field for every malformed request,
``/health``, and a real uvicorn process that never imports torch."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from pipeline.cli import app as cli_app
from pipeline.data.tasks import get_task
from pipeline.params import ExportParams
from pipeline.serving import deploy
from pipeline.serving.export import write_export
from pipeline.serving.server import MicroBatcher, ServedModel, ServerSettings, create_app
from tests.conftest import REPO_ROOT
from tests.test_cli_imports import HEAVY
from tests.test_export import build_student, texts

MAX_LENGTH = 32  # longer than any texts() sentence
LIMITS = ServerSettings(max_texts=8, max_chars=300, max_body_bytes=400_000)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_bert_dir) -> dict[str, Path]:
    """Exported sst2 (with int8), mrpc and stsb students."""
    root = tmp_path_factory.mktemp("serve")
    folders = {}
    for task_name in ("sst2", "mrpc", "stsb"):
        model, encoder = build_student(tiny_bert_dir, [task_name], max_length=MAX_LENGTH)
        folders[task_name] = root / task_name
        folders[task_name].mkdir()
        write_export(model, encoder, get_task(task_name), folders[task_name], ExportParams(variants=["int8"]), {})
    return folders


def client(folder: Path, settings: ServerSettings = LIMITS, variant: str | None = "onnx") -> TestClient:
    return TestClient(create_app(folder, variant, settings))


def expected_probabilities(folder: Path, text_a, text_b=None, variant: str = "onnx") -> np.ndarray:
    logits = deploy.ExportedStudent(folder, variant).logits(text_a, text_b, batch_size=1)
    return deploy.softmax(logits.astype(np.float64))


@pytest.mark.parametrize("task_name", ["sst2", "mrpc"])
def test_predictions_equal_the_exported_students(exports, task_name):
    task = get_task(task_name)
    text_a = texts(5, 1)
    text_b = texts(5, 2) if task.is_pair else None
    body = {"texts": text_a, **({"texts_b": text_b} if text_b else {})}
    with client(exports[task_name]) as http:
        response = http.post("/predict", json=body)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    expected = expected_probabilities(exports[task_name], text_a, text_b)
    assert len(predictions) == len(text_a) == len(expected)
    for answer, probabilities in zip(predictions, expected, strict=True):
        assert list(answer["probabilities"]) == list(task.labels)
        np.testing.assert_allclose(list(answer["probabilities"].values()), probabilities, atol=1e-6, rtol=0)
        assert answer["label"] == task.labels[int(probabilities.argmax())]


def test_regression_answers_the_score_and_int8_is_served(exports):
    text_a, text_b = texts(4, 3), texts(4, 4)
    with client(exports["stsb"]) as http:
        response = http.post("/predict", json={"texts": text_a, "texts_b": text_b})
    assert response.status_code == 200, response.text
    scores = [answer["score"] for answer in response.json()["predictions"]]
    np.testing.assert_allclose(
        scores, deploy.ExportedStudent(exports["stsb"], "onnx").logits(text_a, text_b)[:, 0], atol=1e-6
    )

    sentence = ["the film is really good"]
    with client(exports["sst2"], variant="int8") as http:
        assert http.get("/health").json()["variant"] == "int8"
        answer = http.post("/predict", json={"texts": sentence}).json()["predictions"][0]
    expected = expected_probabilities(exports["sst2"], sentence, variant="int8")[0]
    np.testing.assert_allclose(list(answer["probabilities"].values()), expected, atol=1e-6)


@pytest.mark.parametrize(("variant", "tolerance"), [("onnx", 1e-6), ("int8", 2e-2)])
def test_concurrent_requests_share_onnxruntime_calls_and_answer_as_if_alone(exports, variant, tolerance):
    """Requests arriving within the batch window are scored together, each answer equal to the request's own (int8:
    within quantisation noise, as its activations are quantised per call)."""
    folder = exports["mrpc"]
    requests = [(texts(n, 10 + n), texts(n, 20 + n)) for n in (1, 3, 1, 5, 2, 1, 4, 1)]
    settings = ServerSettings(max_batch=64, batch_window_ms=300)
    with client(folder, settings, variant) as http, ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: http.post("/predict", json={"texts": r[0], "texts_b": r[1]}), requests))
        stats = http.get("/health").json()["stats"]
    assert stats["rows"] == sum(len(a) for a, _ in requests)
    assert stats["batches"] < len(requests)  # some requests shared a call
    for response, (text_a, text_b) in zip(answers, requests, strict=True):
        assert response.status_code == 200, response.text
        got = [list(p["probabilities"].values()) for p in response.json()["predictions"]]
        expected = expected_probabilities(folder, text_a, text_b, variant)
        np.testing.assert_allclose(got, expected, atol=tolerance, rtol=0)


def test_batcher_fills_calls_up_to_max_batch_in_arrival_order(exports):
    model = ServedModel(exports["sst2"], "onnx", ServerSettings())
    sizes = [3, 3, 3, 1]
    requests = [texts(n - 1, 30 + i) for i, n in enumerate(sizes)]  # texts(n) gives n + 1 texts
    assert [len(r) for r in requests] == sizes

    async def score_all() -> tuple[list[np.ndarray], int]:
        batcher = MicroBatcher(model.student, max_batch=7, window_s=0.05, call_batch=2)
        worker = asyncio.create_task(batcher.run())
        results = await asyncio.gather(*(batcher.logits(model.token_ids(r, None)) for r in requests))
        worker.cancel()
        return results, batcher.batches

    results, batches = asyncio.run(score_all())
    assert batches == 2  # 3 + 3 (the third 3 does not fit 7), then 3 + 1
    for logits, text_a in zip(results, requests, strict=True):
        np.testing.assert_allclose(logits, model.student.logits(text_a, batch_size=1), atol=1e-6, rtol=0)


LONG = "good " * (MAX_LENGTH + 1)
MALFORMED = [
    ("sst2", b"{not json", 400, "body"),
    ("sst2", b"\xff\xfe", 400, "body"),
    ("sst2", b'["good film"]', 400, "body"),
    ("sst2", b"{}", 422, "texts"),
    ("sst2", b'{"text": ["good film"]}', 422, ["text", "texts"]),  # unknown, and texts missing
    ("sst2", b'{"texts": "good film"}', 422, "texts"),
    ("sst2", b'{"texts": null}', 422, "texts"),
    ("sst2", b'{"texts": []}', 422, "texts"),
    ("sst2", b'{"texts": ["good", 3]}', 422, "texts[1]"),
    ("sst2", b'{"texts": ["good", ["bad"]]}', 422, "texts[1]"),
    ("sst2", b"[" * 100_000 + b"]" * 100_000, 400, "body"),  # deeper than the JSON parser's recursion
    ("sst2", b'{"texts": ["good", ""]}', 422, "texts[1]"),
    ("sst2", b'{"texts": ["good", "bad \\udc00 film"]}', 422, "texts[1]"),  # a lone surrogate
    ("sst2", b'{"texts": ["good", " \\t "]}', 422, "texts[1]"),
    ("sst2", json.dumps({"texts": ["x"] * 9}).encode(), 422, "texts"),
    ("sst2", json.dumps({"texts": ["good", "a" * 301]}).encode(), 422, "texts[1]"),
    ("sst2", json.dumps({"texts": ["good", LONG]}).encode(), 422, "texts[1]"),
    ("sst2", json.dumps({"texts": ["a" * 300] * 1400}).encode(), 413, "body"),
    ("sst2", b'{"texts": ["good"], "texts_b": ["bad"]}', 422, "texts_b"),
    ("mrpc", b'{"texts": ["good"]}', 422, "texts_b"),
    ("mrpc", b'{"texts": ["good", "bad"], "texts_b": ["fine"]}', 422, "texts_b"),
    ("mrpc", b'{"texts": ["good"], "texts_b": [""]}', 422, "texts_b[0]"),
    ("mrpc", json.dumps({"texts": ["good"], "texts_b": [LONG]}).encode(), 422, "texts_b[0]"),
    ("stsb", b'{"texts": ["good"], "texts_b": 5}', 422, "texts_b"),
]


@pytest.mark.parametrize(("task_name", "body", "status", "field"), MALFORMED)
def test_malformed_requests_get_a_4xx_json_naming_the_field(exports, task_name, body, status, field):
    with client(exports[task_name]) as http:
        response = http.post("/predict", content=body)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        errors = response.json()["errors"]
        assert [error["field"] for error in errors] == (field if isinstance(field, list) else [field]), errors
        assert errors[0]["message"]
        stats = http.get("/health").json()["stats"]
    assert stats["rejected"] == stats["requests"] == 1 and stats["batches"] == 0  # nothing was scored


def test_truncate_cuts_over_long_texts_as_the_exported_student_does(exports):
    text_a, text_b = ["good film", LONG], [LONG, "dull"]
    with client(exports["mrpc"], ServerSettings(truncate=True)) as http:
        response = http.post("/predict", json={"texts": text_a, "texts_b": text_b})
    assert response.status_code == 200, response.text
    got = [list(p["probabilities"].values()) for p in response.json()["predictions"]]
    np.testing.assert_allclose(got, expected_probabilities(exports["mrpc"], text_a, text_b), atol=1e-6, rtol=0)


def test_every_bad_field_is_named_and_unknown_routes_answer_json(exports):
    with client(exports["mrpc"]) as http:
        response = http.post("/predict", json={"texts": ["good", "", 4], "texts_b": ["a", "b", "c"], "extra": 1})
        assert response.status_code == 422
        assert [e["field"] for e in response.json()["errors"]] == ["extra", "texts[1]", "texts[2]"]
        for method, path, status in (("GET", "/predict", 405), ("POST", "/nowhere", 404)):
            response = http.request(method, path)
            assert response.status_code == status
            assert response.json()["errors"][0]["field"] == "path"


def test_health_describes_the_served_model(exports):
    with client(exports["sst2"]) as http:
        health = http.get("/health").json()
    assert health["status"] == "ok" and health["task"] == "sst2" and health["variant"] == "onnx"
    assert health["labels"] == ["0", "1"] and health["pair"] is False and health["max_length"] == MAX_LENGTH
    assert health["limits"]["max_texts"] == LIMITS.max_texts


def test_cli_errors_name_the_folder_the_task_and_the_variant(exports, tmp_path):
    runner = CliRunner()
    cases = [
        (["--model-dir", str(tmp_path)], f"{tmp_path / 'config.json'}: no exported student"),
        (["--model-dir", str(exports["sst2"]), "--task", "mrpc"], "exported for task 'sst2', not 'mrpc'"),
        (["--model-dir", str(exports["mrpc"]), "--model", "table"], "no variant 'table'; exported: "),
        ([], "give --task"),
    ]
    for args, message in cases:
        result = runner.invoke(cli_app, ["serve", *args])
        assert result.exit_code == 1, result.output
        assert message in result.output


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_real_uvicorn_process_serves_without_importing_torch(exports, tmp_path):
    """Outside the workspace (no params.yaml, no models/), from the folder alone."""
    folder, port = exports["sst2"], free_port()
    command = [sys.executable, "-X", "importtime", "-m", "pipeline", "serve", "--model-dir", str(folder),
               "--port", str(port), "--model", "int8"]  # fmt: skip
    server = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    assert json.load(answer)["variant"] == "int8"
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        sentences = texts(3, 5)
        request = urllib.request.Request(f"{url}/predict", json.dumps({"texts": sentences}).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            predictions = json.load(answer)["predictions"]
    finally:
        server.terminate()
        stderr = server.communicate(timeout=30)[1]
    got = [list(p["probabilities"].values()) for p in predictions]
    np.testing.assert_allclose(got, expected_probabilities(folder, sentences, variant="int8"), atol=2e-2)
    modules = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in stderr.splitlines()
               if line.startswith("import time:")}  # fmt: skip
    assert {"uvicorn", "onnxruntime", "tokenizers"} <= modules
    assert not modules & HEAVY
