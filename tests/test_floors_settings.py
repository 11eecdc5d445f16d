"""The per-dataset settings the speed benchmarks give each model resolve, and FFTs count as kernels."""

import pytest
import torch

from benchmarks.floors import SETTINGS, KernelRecorder, kind, settings
from prismrec.experiment.config import resolve_config


@pytest.mark.parametrize("model,dataset", [(m, d) for m, per in SETTINGS.items() for d in per])
def test_benchmark_settings_resolve(model, dataset):
    config = resolve_config(model, dataset, settings(model, dataset))
    assert config.params.modalities == {"tiktok": ["image", "audio"], "lfm2k": ["text", "audio"]}[dataset]


def test_role_settings_keep_the_first_modality_in_the_image_part():
    assert settings("smore", "lfm2k")["modality_roles"] == ["image", "text"]
    assert settings("mmgcn", "tiktok")["modality_roles"] == ["image", "text"]
    assert settings("lgmrec", "lfm2k")["hcl_order"] == ["text", "audio"]
    assert settings("bpr", "lfm2k") == {}  # no modalities field, nothing added


def test_ffts_are_recorded_as_their_own_kernel():
    x = torch.randn(8, 16)
    with KernelRecorder() as rec:
        torch.fft.irfft(torch.fft.rfft(x, dim=-1) * 2, n=16, dim=-1)
        x @ x.T
    assert [kind(c) for c in rec.calls].count("fft") == 2 and "gemm" in [kind(c) for c in rec.calls]
