import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.data.glue import read_glue_tsv
from pipeline.data.schema import prepared_schema
from pipeline.data.tasks import get_task
from pipeline.errors import DataFormatError
from pipeline.params import load_params
from pipeline.stages.prepare import run_prepare, subsample
from tests.conftest import REPO_ROOT

SST2 = get_task("sst2")


def test_reads_sst2_layout(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("sentence\tlabel\nit 's a charming journey . \t1\nbleak and desperate \t0\n")
    table = read_glue_tsv(SST2, path)
    assert table.schema == prepared_schema(SST2)
    assert table.to_pylist() == [
        {"id": 0, "text_a": "it 's a charming journey .", "text_b": None, "label": 1},
        {"id": 1, "text_a": "bleak and desperate", "text_b": None, "label": 0},
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"text\tlabel\nfine\t1\n", r"train.tsv:1: missing column 'sentence'"),
        (b"sentence\tlabel\nfine\t1\nbad \xff byte\t0\n", r"train.tsv:3: not valid UTF-8"),
        (b"sentence\tlabel\nfine\t1\n   \t0\n", r"train.tsv:3: empty text in column 'sentence'"),
        (b"sentence\tlabel\nfine\t1\nodd\t7\n", r"train.tsv:3: label '7' is not one of \['0', '1'\]"),
        (b"sentence\tlabel\nfine\t1\nno label here\n", r"train.tsv:3: expected at least 2 tab-separated fields"),
        (b"sentence\tlabel\n", r"no data rows"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "train.tsv"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match=message):
        read_glue_tsv(SST2, path)


def test_run_prepare_writes_every_split_and_subsamples(glue_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_GLUE_DIR", str(glue_dir))
    params = load_params(REPO_ROOT / "params.yaml")
    params = params.model_copy(update={"data": params.data.model_copy(update={"max_train_examples": 25})})
    counts = run_prepare("sst2", params, tmp_path / "prepared")
    assert counts == {"train": 25, "dev": 40, "unlabelled": 0}
    train = pq.read_table(tmp_path / "prepared" / "sst2" / "train.parquet")
    ids = train.column("id").to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 25 and max(ids) < 80


def test_missing_data_dir_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_GLUE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataFormatError, match=r"nowhere/SST-2: GLUE data folder for task sst2 not found"):
        run_prepare("sst2", load_params(REPO_ROOT / "params.yaml"), tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()


def test_subsample_is_seeded():
    table = pa.table({"id": list(range(100))})
    assert subsample(table, 10, 1).equals(subsample(table, 10, 1))
    assert not subsample(table, 10, 1).equals(subsample(table, 10, 2))
    assert subsample(table, None, 1).equals(table)


def test_skip_bad_rows_leaves_them_out_and_logs(tmp_path, caplog):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\nfine\t1\nbroken row\n\xff\t0\nodd\t7\nalso fine\t0\n")
    table = read_glue_tsv(SST2, path, skip_bad_rows=True)
    assert table.to_pylist() == [
        {"id": 0, "text_a": "fine", "text_b": None, "label": 1},
        {"id": 1, "text_a": "also fine", "text_b": None, "label": 0},
    ]
    assert "skipped 3 bad rows" in caplog.text and "train.tsv:3: expected at least 2" in caplog.text
    with pytest.raises(DataFormatError, match="train.tsv:3"):
        read_glue_tsv(SST2, path)
