"""Datasets in MMRec layout and the BPR sampler."""

from prismrec.data.dataset import (
    Dataset,
    DatasetError,
    csr_fingerprint,
    list_datasets,
    load_dataset,
    resolve_data_dir,
)
from prismrec.data.sampler import BPRSampler

__all__ = [
    "BPRSampler",
    "Dataset",
    "DatasetError",
    "csr_fingerprint",
    "list_datasets",
    "load_dataset",
    "resolve_data_dir",
]
