"""Item images -> vectors for ``prismrec build --item-images`` (``image_feat.npy``).

Images are read with Pillow and preprocessed as the ImageNet backbones expect: RGB, shorter side
resized to ``size · 256/224`` (bilinear), centre crop ``size × size``, scaled to [0, 1] and
normalised with the ImageNet mean and std. The encoder is one of

- an **exported model file**: ``backbone.pt2`` saved with ``torch.export.save(torch.export.export(
  model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), path)`` (a dynamic batch
  dimension), or a TorchScript file saved with ``torch.jit.save`` (any other suffix). It maps a
  ``(B, 3, size, size)`` float batch to ``(B, ...)`` (flattened to one vector per image). Needs
  nothing but PyTorch, so a backbone exported once on a machine with torchvision and internet
  runs anywhere;
- ``torchvision:NAME`` (e.g. ``torchvision:resnet50``, needs ``torchvision``): the model with its
  default ImageNet weights and the classifier removed (the pooled features, as MMRec's Amazon
  image features). The weights come from the local torch hub cache when present; with internet
  access torchvision downloads them there on first use; ``--image-weights FILE`` loads a
  state-dict file instead.

Images are named by the raw item id: a folder of ``<item id>.<jpg|jpeg|png|webp|bmp|gif>`` files,
or a CSV/TSV with the item column and an ``image`` column of paths (relative to the table).
"""

from __future__ import annotations

import logging
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prismrec.errors import ConfigError, DatasetError

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def image_paths(source: Path, item_col: str) -> dict[str, Path]:
    """``{raw item id: image path}`` from a folder of ``<id>.<ext>`` files or a CSV/TSV table."""
    if source.is_dir():
        paths: dict[str, Path] = {}
        for path in sorted(source.iterdir()):
            if path.suffix.lower() in SUFFIXES:
                if path.stem in paths:
                    raise DatasetError(f"{source}: item {path.stem!r} has two images ({paths[path.stem].name}, "
                                       f"{path.name}); keep one per item")
                paths[path.stem] = path
        if not paths:
            raise DatasetError(f"{source} holds no image named <item id>{'|'.join(SUFFIXES)}")
        return paths
    if not source.is_file():
        raise DatasetError(f"--item-images {source} does not exist: give a folder of <item id>.jpg files "
                           "or a CSV/TSV with the item column and an image column")
    from prismrec.data.build import table_separator

    sep = table_separator(source)
    table = pd.read_csv(source, sep=sep, dtype=str, keep_default_na=False)
    missing = [c for c in (item_col, "image") if c not in table.columns]
    if missing:
        raise DatasetError(f"{source}: no column {', '.join(map(repr, missing))} (columns: "
                           f"{', '.join(table.columns[:8])}); give the item column and an 'image' column of paths")
    repeated = table[item_col].duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DatasetError(f"{source}: item {table[item_col].iloc[row]!r} has a second image row at line {row + 2}")
    return {item: (source.parent / path) for item, path in zip(table[item_col], table["image"])}


def load_image_encoder(spec: str, weights: str | Path | None = None) -> torch.nn.Module:
    """The encoder named by ``--image-encoder`` (module docstring), in eval mode."""
    if spec.startswith("torchvision:"):
        try:
            import torchvision
        except ImportError:
            raise ConfigError("--image-encoder torchvision:... needs torchvision (pip install torchvision); "
                              "or give a TorchScript file of the backbone") from None
        name = spec.partition(":")[2]
        try:
            builder = torchvision.models.get_model_builder(name)
        except ValueError:
            raise ConfigError(f"--image-encoder: torchvision has no model {name!r} (e.g. resnet50, vit_b_16)") from None
        if weights is not None:
            model = builder(weights=None)
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        else:
            try:
                model = builder(weights="DEFAULT")
            except OSError as exc:  # no cached weights and no internet
                raise ConfigError(f"--image-encoder {spec}: its weights are not in the torch hub cache and cannot "
                                  f"be downloaded ({exc}); pass --image-weights FILE") from None
        for head in ("fc", "classifier", "heads"):
            if hasattr(model, head):
                setattr(model, head, torch.nn.Identity())
        return model.eval()
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--image-encoder {spec}: no such file; give an exported model (.pt2, torch.export.save), "
                          "a TorchScript file (torch.jit.save) or torchvision:NAME")
    try:
        if path.suffix == ".pt2":
            quiet = logging.getLogger("torch.export")
            level, quiet.level = quiet.level, logging.ERROR  # it logs a traceback before raising
            try:
                return torch.export.load(str(path)).module()
            finally:
                quiet.setLevel(level)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        kind = "an exported program (.pt2)" if path.suffix == ".pt2" else "a TorchScript file"
        raise ConfigError(f"--image-encoder {spec} is not {kind} ({str(exc).splitlines()[0][:120]}); save the "
                          "backbone with torch.export.save (.pt2) or torch.jit.save") from None


def preprocess(path: Path, size: int = 224) -> np.ndarray:
    """One image as a normalised ``(3, size, size)`` float32 array (module docstring)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            short = round(size * 256 / 224)
            scale = short / min(image.size)
            image = image.resize((max(short, round(image.width * scale)), max(short, round(image.height * scale))),
                                 Image.BILINEAR)
            left, top = (image.width - size) // 2, (image.height - size) // 2
            image = image.crop((left, top, left + size, top + size))
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: not a readable image ({exc}); replace or remove it") from None
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)


@torch.no_grad()
def encode_images(paths: list[Path], encoder: torch.nn.Module, size: int = 224, batch_size: int = 32) -> np.ndarray:
    """``(len(paths), d)`` float32 vectors: each image preprocessed, encoded, flattened."""
    out = []
    for start in range(0, len(paths), batch_size):
        batch = torch.from_numpy(np.stack([preprocess(p, size) for p in paths[start:start + batch_size]]))
        try:
            vectors = encoder(batch)
        except (RuntimeError, AssertionError, ValueError) as exc:
            raise ConfigError(f"the image encoder refused a batch of shape {tuple(batch.shape)} "
                              f"({str(exc).splitlines()[0][:120]}): export it for --image-size {size} "
                              "and a dynamic batch dimension") from None
        out.append(vectors.reshape(len(batch), -1).float().numpy())
    return np.concatenate(out)


def item_image_vectors(source: Path, item_col: str, raw_items, encoder_spec: str, weights=None,
                       size: int = 224) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(ids, vectors, provenance)`` for the kept items ``raw_items`` that have an image."""
    paths = image_paths(source, item_col)
    encoder = load_image_encoder(encoder_spec, weights)
    ids = [str(i) for i in raw_items if str(i) in paths]
    if not ids:
        raise DatasetError(f"{source}: none of the {len(raw_items)} kept items has an image (named by the raw "
                           f"item id, e.g. {raw_items[0]}{SUFFIXES[0]})")
    missing = [i for i in ids if not paths[i].is_file()]
    if missing:
        raise DatasetError(f"{source}: the image of item {missing[0]!r} ({paths[missing[0]]}) does not exist "
                           f"({len(missing)} such items)")
    vectors = encode_images([paths[i] for i in ids], encoder, size)
    provenance = {"source": str(source.resolve()), "encoder": encoder_spec,
                  "weights": str(Path(weights).resolve()) if weights else None, "image_size": size,
                  "preprocessing": "RGB, resize shorter side to size*256/224, centre crop, ImageNet mean/std",
                  "images_found": len(ids)}
    return np.asarray(ids), vectors, provenance
