import os
import tempfile
import warnings
from pathlib import Path

import pytest

from prismrec.data import load_dataset
from prismrec.data.dataset import default_data_dirs
from prismrec.data.synthetic import write_planted_dataset

# Graphs the tests build are cached in a throwaway folder, never in the user's cache.
os.environ.setdefault("PRISMREC_GRAPH_CACHE", tempfile.mkdtemp(prefix="prismrec-test-graphs-"))

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def shared_data_dir() -> Path | None:
    for candidate in default_data_dirs():
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("real MMRec data (../shared/data) is not available on this machine")
    return root


@pytest.fixture(scope="session")
def planted_dir(tmp_path_factory) -> Path:
    """A small synthetic dataset with planted cluster structure (image + text features)."""
    return write_planted_dataset(tmp_path_factory.mktemp("data") / "planted")


@pytest.fixture(scope="session")
def planted(planted_dir):
    return load_dataset(planted_dir)
