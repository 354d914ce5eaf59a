"""``python -m pipeline predict``: JSON lines from files and stdin, single sentences and pairs, STS-B scores, and
errors naming the line for empty lines, wrong column counts and over-long inputs, with nothing written; the model
catalogue it shares with evaluate, and no torch for an exported model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline import paths
from pipeline.cli import app
from pipeline.data.tasks import get_task
from pipeline.params import ExportParams, Params
from pipeline.serving import deploy
from pipeline.serving.catalogue import model_source, multi_task_models
from pipeline.serving.export import write_export
from pipeline.serving.predict import parse_lines
from pipeline.students.architectures import save_student
from tests.test_cli_imports import HEAVY, imported_packages
from tests.test_export import build_student, texts

MAX_LENGTH = 32  # longer than any texts() sentence


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    """A working folder with exported sst2, mrpc and stsb students, and the PyTorch sst2 student."""
    root = tmp_path_factory.mktemp("predict")
    for task_name in ("sst2", "mrpc", "stsb"):
        model, encoder = build_student(tiny_bert_dir, [task_name], max_length=MAX_LENGTH)
        folder = root / paths.export_dir(task_name)
        folder.mkdir(parents=True)
        write_export(model, encoder, get_task(task_name), folder, ExportParams(variants=["int8"]), {})
        if task_name == "sst2":
            save_student(model, encoder, root / paths.student_dir(task_name), {})
    return root


def predict_cli(project: Path, monkeypatch, *args: str, stdin: bytes | None = None):
    monkeypatch.chdir(project)
    return CliRunner().invoke(app, ["predict", *args], input=stdin)


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_single_sentences_from_a_file(project, monkeypatch, tmp_path):
    sentences = texts(6, 1)
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(sentences) + "\n")
    result = predict_cli(project, monkeypatch, "--task", "sst2", str(path))
    assert result.exit_code == 0, result.output
    out = records(result.stdout)
    assert [r["line"] for r in out] == list(range(1, len(sentences) + 1))
    logits = deploy.ExportedStudent(project / paths.export_dir("sst2")).logits(sentences)
    expected = deploy.softmax(logits.astype(np.float64))
    for record, probabilities in zip(out, expected, strict=True):
        assert set(record) == {"line", "label", "probabilities"}
        assert list(record["probabilities"]) == ["0", "1"]
        np.testing.assert_allclose(list(record["probabilities"].values()), probabilities, rtol=1e-6)
        assert record["label"] == str(int(probabilities.argmax()))


def test_stdin_pytorch_and_int8_models_agree_with_the_export(project, monkeypatch):
    stdin = "".join(f"{s}\r\n" for s in texts(5, 2)).encode()  # CRLF line ends are accepted
    by_model = {}
    for model in ("student-onnx", "student", "student-int8"):
        result = predict_cli(project, monkeypatch, "--task", "sst2", "--model", model, stdin=stdin)
        assert result.exit_code == 0, result.output
        by_model[model] = records(result.stdout)
    assert len(by_model["student"]) == 6
    for name in ("student", "student-int8"):
        for ours, reference in zip(by_model[name], by_model["student-onnx"], strict=True):
            assert ours["line"] == reference["line"]
            np.testing.assert_allclose(list(ours["probabilities"].values()), list(reference["probabilities"].values()),
                                       atol=1e-4 if name == "student" else 2e-2)  # fmt: skip


def test_pairs_from_a_tsv_file_and_scores_for_stsb(project, monkeypatch, tmp_path):
    a, b = texts(4, 3), texts(4, 4)
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{x}\t{y}\n" for x, y in zip(a, b, strict=True)))
    mrpc = predict_cli(project, monkeypatch, "--task", "mrpc", str(path), "--output", str(tmp_path / "out.jsonl"))
    assert mrpc.exit_code == 0, mrpc.output
    out = records((tmp_path / "out.jsonl").read_text())
    assert len(out) == 5 and all(set(r) == {"line", "label", "probabilities"} for r in out)

    stsb = predict_cli(project, monkeypatch, "--task", "stsb", str(path))
    assert stsb.exit_code == 0, stsb.output
    scores = records(stsb.stdout)
    expected = deploy.ExportedStudent(project / paths.export_dir("stsb")).logits(a, b)[:, 0]
    assert [set(r) for r in scores] == [{"line", "score"}] * 5
    np.testing.assert_allclose([r["score"] for r in scores], expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("task_name", "lines", "messages"),
    [
        ("sst2", ["good film", "", "bad film"], ["<stdin>:2: empty line"]),
        ("sst2", ["good film", "   ", "bad\tfilm", "fine"],
         ["<stdin>:2: empty line", "<stdin>:3: expected one sentence"]),
        ("mrpc", ["good\tfilm", "bad film", "a\tb\tc", "x\t "],
         ["<stdin>:2: expected 2 tab-separated columns for mrpc, found 1",
          "<stdin>:3: expected 2 tab-separated columns for mrpc, found 3", "<stdin>:4: column 2 is empty"]),
        ("sst2", ["good film", "good " * (MAX_LENGTH + 1), "bad"],
         [f"<stdin>:2: {MAX_LENGTH + 1} tokens, more than student-int8's maximum of {MAX_LENGTH}"]),
        ("mrpc", ["good\tfilm", "bad\t" + "dull " * (MAX_LENGTH + 3)],
         [f"<stdin>:2: {MAX_LENGTH + 3} tokens, more than student-int8's maximum of {MAX_LENGTH}"]),
    ],
)  # fmt: skip
def test_bad_lines_fail_the_run_naming_each_line_and_write_nothing(project, monkeypatch, tmp_path, task_name, lines,
                                                                    messages):  # fmt: skip
    out = tmp_path / "out.jsonl"
    stdin = "".join(line + "\n" for line in lines).encode()
    result = predict_cli(project, monkeypatch, "--task", task_name, "-o", str(out), stdin=stdin)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert not out.exists()
    errors = result.stderr.splitlines()
    assert errors[0].startswith("error: ")
    assert len(errors) == len(messages)
    for line, message in zip(errors, messages, strict=True):
        assert message in line, (line, message)


def test_truncate_accepts_over_long_inputs(project, monkeypatch):
    stdin = ("good " * (MAX_LENGTH + 5) + "\nbad\n").encode()
    result = predict_cli(project, monkeypatch, "--task", "sst2", "--truncate", stdin=stdin)
    assert result.exit_code == 0, result.output
    truncated = " ".join(["good"] * MAX_LENGTH)
    expected = deploy.ExportedStudent(project / paths.export_dir("sst2")).logits([truncated, "bad"])
    np.testing.assert_allclose([r["probabilities"]["1"] for r in records(result.stdout)],
                               deploy.softmax(expected.astype(np.float64))[:, 1], rtol=1e-6)  # fmt: skip


def test_unknown_model_and_missing_export_are_clear_errors(project, monkeypatch):
    result = predict_cli(project, monkeypatch, "--task", "sst2", "--model", "student-fp16", stdin=b"good\n")
    assert result.exit_code == 1 and "no exported variant 'student-fp16'" in result.stderr
    assert "student-int8" in result.stderr
    result = predict_cli(project, monkeypatch, "--task", "qqp", stdin=b"good\tbad\n")
    assert result.exit_code == 1 and "python -m pipeline export --task qqp" in result.stderr


def test_parse_lines_keeps_line_numbers_and_rejects_bad_bytes():
    task = get_task("sst2")
    numbers, rows, errors = parse_lines(b"one\r\ntwo \xff\nthree\n", task)
    assert numbers == [1, 3] and rows == [["one"], ["three"]]
    assert errors == [(2, "not valid UTF-8 (invalid start byte at byte 4)")]
    assert parse_lines(b"", task) == ([], [], [])
    assert parse_lines(b"last line without newline", task)[0] == [1]


def test_mkd_students_predict_by_name(project, monkeypatch, tiny_bert_dir):
    """An MKD student of any architecture predicts as ``mkd_<architecture>`` (PyTorch; the task's fine-tuned model,
    else the joint one) and ``mkd_<architecture>-<variant>`` (exported), with the same probabilities."""
    model, encoder = build_student(tiny_bert_dir, ["sst2", "mrpc"], max_length=MAX_LENGTH)
    save_student(model, encoder, project / paths.mkd_dir("bilstm") / "multitask", {})
    write_export(
        model, encoder, get_task("mrpc"), _mkd_export(project, "bilstm", "mrpc"), ExportParams(variants=[]), {}
    )
    stdin = "".join(f"{a}\t{b}\n" for a, b in zip(texts(4, 3), texts(4, 4))).encode()
    outputs = {}
    for name in ("mkd_bilstm", "mkd_bilstm-onnx"):
        result = predict_cli(project, monkeypatch, "--task", "mrpc", "--model", name, stdin=stdin)
        assert result.exit_code == 0, result.output
        outputs[name] = [list(r["probabilities"].values()) for r in records(result.stdout)]
    np.testing.assert_allclose(outputs["mkd_bilstm"], outputs["mkd_bilstm-onnx"], atol=1e-5)
    missing = predict_cli(project, monkeypatch, "--task", "mrpc", "--model", "mkd_transformer", stdin=stdin)
    assert missing.exit_code == 1 and "mkd/transformer/multitask: no MKD student" in missing.output
    unknown = predict_cli(project, monkeypatch, "--task", "mrpc", "--model", "mkd_bilstm-int8", stdin=stdin)
    assert unknown.exit_code == 1 and "no exported variant 'mkd_bilstm-int8'" in unknown.stderr
    assert "mkd_bilstm_joint" in unknown.stderr and "mkd_bilstm-onnx" in unknown.stderr


def test_predict_and_evaluate_resolve_mkd_students_to_the_same_folder(tmp_path, monkeypatch, tiny_bert_dir):
    """``mkd_<architecture>`` is the task's fine-tuned MKD student when there is one, else the joint one, for predict
    and evaluate alike; ``mkd_<architecture>_joint`` is always the joint one."""
    monkeypatch.chdir(tmp_path)
    task, params = get_task("mrpc"), Params(mkd={"students": ["bilstm"], "finetune_epochs": 1})
    root = paths.mkd_dir("bilstm")
    save_student(*build_student(tiny_bert_dir, ["sst2", "mrpc"], max_length=MAX_LENGTH), root / paths.MKD_JOINT, {})
    a, b = texts(4, 3), texts(4, 4)
    stdin = "".join(f"{x}\t{y}\n" for x, y in zip(a, b, strict=True)).encode()
    predicted = {}
    for folder in (root / paths.MKD_JOINT, root / task.name):
        if folder.name == task.name:
            save_student(*build_student(tiny_bert_dir, ["mrpc"], seed=1, max_length=MAX_LENGTH), folder, {})
        evaluated = multi_task_models(task, params)["mkd_bilstm"]
        assert model_source("mkd_bilstm", task).path == evaluated.path == folder
        result = CliRunner().invoke(app, ["predict", "--task", "mrpc", "--model", "mkd_bilstm"], input=stdin)
        assert result.exit_code == 0, result.output
        predicted[folder.name] = [list(r["probabilities"].values()) for r in records(result.stdout)]
        logits = evaluated.load(torch.device("cpu")).logits(a, b, 8)
        np.testing.assert_allclose(predicted[folder.name], deploy.softmax(logits.astype(np.float64)), atol=1e-5)
        joint = multi_task_models(task, params)["mkd_bilstm_joint"]
        assert model_source("mkd_bilstm_joint", task).path == joint.path == root / paths.MKD_JOINT
    assert not np.allclose(predicted[paths.MKD_JOINT], predicted[task.name])  # the folder decided the output


def test_predict_with_an_exported_model_imports_no_torch(project):
    packages, stdout = imported_packages("predict", "--task", "sst2", cwd=project, stdin=b"good film\nbad film\n")
    assert len(records(stdout.decode())) == 2
    assert "onnxruntime" in packages
    assert not packages & HEAVY


def _mkd_export(project: Path, architecture: str, task_name: str) -> Path:
    folder = project / paths.mkd_export_dir(architecture) / task_name
    folder.mkdir(parents=True)
    return folder
