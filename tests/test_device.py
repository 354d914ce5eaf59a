import pytest
import torch

from pipeline.errors import ParamsError
from pipeline.training import device

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_training_precision_on_cpu_follows_native_bf16(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native_bf16)
    assert device.training_precision(CPU, "auto") == expected


def test_cpu_bf16_detection_reads_cpu_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_f": True, "avx512_bf16": False})
    assert not device.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert device.cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_bf16": True})
    assert device.cpu_has_native_bf16()


def test_auto_training_precision_on_cuda(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert device.training_precision(cuda, "auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert device.training_precision(cuda, "auto") == "fp16"


def test_explicit_training_precision_and_fp16_on_cpu():
    assert device.training_precision(CPU, "fp32") == "fp32"
    assert device.training_precision(CPU, "bf16") == "bf16"
    with pytest.raises(ParamsError, match="teacher.mixed_precision: fp16 training needs a GPU"):
        device.training_precision(CPU, "fp16")


def test_inference_autocast_is_unchanged_on_cpu():
    """``auto`` inference stays fp32 on CPU even where training picks bf16."""
    assert device.autocast_dtype(CPU, "auto") is None
