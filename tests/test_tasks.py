import pytest

from pipeline.data.tasks import TASKS, get_task
from pipeline.errors import UnknownTaskError


def test_registry_describes_every_glue_task():
    assert set(TASKS) == {"sst2", "cola", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert not get_task("sst2").is_pair and get_task("qqp").is_pair
    assert get_task("stsb").is_regression and get_task("stsb").num_outputs == 1
    assert get_task("mnli").num_outputs == 3
    assert get_task("mnli").splits == ("train", "dev_matched", "dev_mismatched")
    assert get_task("qqp").primary_metric == "f1"
    assert get_task("SST2") is get_task("sst2")


def test_unknown_task_names_known_ones():
    with pytest.raises(UnknownTaskError, match="unknown task 'squad'; known tasks: cola, mnli"):
        get_task("squad")
