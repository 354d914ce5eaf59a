"""End-to-end: DVC sees every input a stage reads. One task of your own in a tmp DVC project with no GLUE folder:
prepare needs none, a changed unlabelled file reruns augment (not only prepare) and then score, never the teacher; a
killed atomic write leaves nothing DVC hashes; what `dvc repro` builds for one task is what docs/own-data.md says."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import paths
from tests.conftest import FILLER, NEGATIVE, POSITIVE, REPO_ROOT, copy_project, init_project, tiny_params
from tests.test_pipeline_e2e import dvc, stages_run, stale_stages

pytestmark = pytest.mark.e2e

TASK = "notes"
SINGLE_TASK = ("prepare", "teacher", "augment", "score", "student", "baseline", "export", "evaluate")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("data-deps")
    files = root / "files"
    files.mkdir()
    rng = random.Random(0)
    lines = ["text,mood"]
    for i in range(40):
        mood = ("good", "bad")[i % 2]
        words = [*rng.sample(FILLER, 3), rng.choice(POSITIVE if mood == "good" else NEGATIVE), str(i)]
        lines.append(f"{' '.join(words)},{mood}")
    (files / "notes.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (files / "raw.txt").write_text("".join(f"an unlabelled note {i}\n" for i in range(5)), encoding="utf-8")
    proj = copy_project(root / "proj")
    params = tiny_params(root / "no-glue-here", tiny_bert_dir)  # a folder that does not exist: no GLUE data at all
    params["data"]["files_dir"] = str(files)
    params["tasks"] = [TASK]
    params["task_defs"] = {
        TASK: {"train": "notes.csv", "text_columns": ["text"], "label_column": "mood", "unlabelled": ["raw.txt"]}
    }
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_project(proj)
    assert not (root / "no-glue-here").exists()
    return proj


def unlabelled_texts(project) -> list[str]:
    table = pq.read_table(paths.transfer_set(TASK, project / paths.AUGMENTED_DIR))
    return table.filter(table.column("is_unlabelled")).column("text_a").to_pylist()


def test_a_changed_unlabelled_file_reruns_augment_without_a_glue_folder(project):
    result = dvc("repro", f"score@{TASK}", cwd=project)  # no GLUE folder named or present: prepare runs
    assert stages_run(result) == {f"{stage}@{TASK}" for stage in ("prepare", "teacher", "augment", "score")}
    assert unlabelled_texts(project) == [f"an unlabelled note {i}" for i in range(5)]
    done = {f"{stage}@{TASK}" for stage in ("prepare", "teacher", "augment", "score")}
    assert not done & stale_stages(dvc("status", cwd=project).stdout)

    raw = project.parent / "files" / "raw.txt"
    raw.write_text(raw.read_text() + "a brand new note\n", encoding="utf-8")
    assert f"prepare@{TASK}" in stale_stages(dvc("status", cwd=project).stdout)
    train = paths.prepared_split(TASK, "train", project / paths.PREPARED_DIR).read_bytes()
    dvc("repro", f"prepare@{TASK}", cwd=project)
    assert paths.prepared_split(TASK, "train", project / paths.PREPARED_DIR).read_bytes() == train  # train as it was
    status = dvc("status", cwd=project).stdout
    assert f"augment@{TASK}" in stale_stages(status)  # its unlabelled split changed: DVC must not skip it
    assert "data/unlabelled/notes.parquet" in status

    result = dvc("repro", f"augment@{TASK}", cwd=project)
    assert stages_run(result) == {f"augment@{TASK}"}
    assert unlabelled_texts(project)[-1] == "a brand new note"  # the student's transfer set has the new text
    # `dvc status` compares each stage with its own inputs: the next stage is listed once augment's output changed
    status = dvc("status", cwd=project).stdout
    assert f"score@{TASK}" in stale_stages(status) and f"teacher@{TASK}" not in stale_stages(status)
    result = dvc("repro", f"score@{TASK}", cwd=project)
    assert stages_run(result) == {f"score@{TASK}"}
    assert not done & stale_stages(dvc("status", cwd=project).stdout)


def test_a_killed_atomic_write_leaves_nothing_dvc_hashes(project):
    """A SIGKILL inside atomic_dir leaves `.notes.*.tmp` beside data/prepared/notes; data/prepared (mkd's and
    compare's dep) keeps its hash, and the next atomic write of that folder removes the leftover."""
    dvc("repro", f"prepare@{TASK}", cwd=project)
    status_before = stale_stages(dvc("status", cwd=project).stdout)
    kill = textwrap.dedent(
        """
        import os, signal
        from pipeline.data.io import atomic_dir
        with atomic_dir("data/prepared/notes") as folder:
            (folder / "train.parquet").write_text("half written")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    killed = subprocess.run([sys.executable, "-c", kill], cwd=project)
    assert killed.returncode == -9
    leftovers = list((project / paths.PREPARED_DIR).glob(f".{TASK}.*.tmp"))
    assert len(leftovers) == 1 and (leftovers[0] / "train.parquet").is_file()
    assert stale_stages(dvc("status", cwd=project).stdout) == status_before

    # a stage that depends on data/prepared as a whole (as mkd and compare do), with the repository's .dvcignore
    toy = project.parent / "toy"
    shutil.copytree(project / paths.PREPARED_DIR / TASK, toy / paths.PREPARED_DIR / TASK)
    shutil.copy(REPO_ROOT / ".dvcignore", toy / ".dvcignore")
    init_project(toy)
    dvc("stage", "add", "-n", "consume", "-d", "data/prepared", "-o", "out.txt", "echo done > out.txt", cwd=toy)
    dvc("repro", cwd=toy)
    shutil.copytree(leftovers[0], toy / paths.PREPARED_DIR / leftovers[0].name)
    assert "Data and pipelines are up to date." in dvc("status", cwd=toy).stdout  # its hash is unchanged

    from pipeline.data.io import atomic_dir

    target = project / paths.PREPARED_DIR / "other"
    (project / paths.PREPARED_DIR / ".other.stale123.tmp").mkdir()
    with atomic_dir(target) as folder:
        (folder / "x").write_text("x")
    assert not list((project / paths.PREPARED_DIR).glob(".other.*.tmp")) and (target / "x").is_file()
    with atomic_dir(project / paths.PREPARED_DIR / TASK) as folder:  # the task's next write removes its leftover
        for split in (project / paths.PREPARED_DIR / TASK).iterdir():
            (folder / split.name).write_bytes(split.read_bytes())
    assert not list((project / paths.PREPARED_DIR).glob(f".{TASK}.*.tmp"))


def test_what_repro_builds_for_one_task(project):
    """docs/own-data.md: `dvc repro` builds every stage, the MKD ones included (each architecture distilled on the
    one task); `dvc repro evaluate` builds prepare ... evaluate only."""
    everything = stale_stages(dvc("status", cwd=project).stdout)  # every stage not built yet
    built = {f"{stage}@{TASK}" for stage in ("prepare", "teacher", "augment", "score")}  # by the tests above
    single = {f"{stage}@{TASK}" for stage in SINGLE_TASK} - built
    mkd = {f"{stage}@{arch}" for stage in ("mkd", "export_mkd") for arch in ("biattentive", "transformer", "bilstm")}
    assert single | mkd | {"compare"} <= everything
    until_evaluate = stale_stages(dvc("status", "--with-deps", "evaluate", cwd=project).stdout)
    assert single <= until_evaluate and not until_evaluate & (mkd | {"compare"})
