"""The Projector keeps one float32 copy of its features and rescales it in place (no full-size
temporaries at build: at Electronics size a 4096-d image matrix is 1 GiB)."""

import subprocess
import sys

import pytest
import torch

from prismrec.nn import encoders
from prismrec.nn.encoders import Projector, normalize_features


def _features(dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(50, 9, generator=g) * torch.linspace(0.1, 30.0, 9) + 5.0).to(dtype)


@pytest.mark.parametrize("mode", ["l2", "standardize"])
def test_in_place_rescaling_is_bit_identical_to_the_copying_one(mode):
    x = _features()
    expected = normalize_features(x, mode)
    assert not torch.equal(expected, x)  # it rescales
    own = x.clone()
    out = normalize_features(own, mode, inplace=True)
    assert out.data_ptr() == own.data_ptr() and torch.equal(out, expected)


@pytest.mark.parametrize("mode", ["none", "l2", "standardize"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projector_rescales_its_own_float32_copy(mode, dtype):
    x = _features(dtype)
    before = x.clone()
    proj = Projector(x, 4, normalize=mode)
    assert torch.equal(x, before)  # the caller's matrix is untouched
    assert proj.features.dtype == torch.float32 and proj.features.data_ptr() != x.data_ptr()
    assert torch.equal(proj.features, normalize_features(x.to(torch.float32), mode))


def test_non_finite_values_are_found_in_any_row_block(monkeypatch):
    monkeypatch.setattr(encoders, "_CHECK_BLOCK", 18)  # blocks of 2 rows of 9
    x = _features()
    x[47, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        Projector(x, 4)


PEAK = """
import resource, sys, torch
from prismrec.nn.encoders import Projector
torch.set_num_threads(1)
x = torch.randn(32768, 2048)  # 256 MiB
proj = Projector(x, 8, normalize=sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # peak MiB
"""


def _peak(mode: str) -> float:
    return float(subprocess.run([sys.executable, "-c", PEAK, mode], capture_output=True, text=True,
                                check=True).stdout)


def test_standardizing_projector_build_holds_one_copy_of_the_features():
    """Standardising adds no full-size temporary to the build: the peak is that of keeping the
    features as they are (one copy, 256 MiB), not ~512 MiB above it (``F - μ`` and the quotient of
    an out-of-place standardisation)."""
    extra = _peak("standardize") - _peak("none")
    assert extra < 128, extra  # half a copy: allocator noise is ~50 MiB
