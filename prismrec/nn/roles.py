"""Modality roles by name: which of a dataset's feature files plays a paper's "image" or "text" part.

Papers written for Amazon data give the visual and the textual modality different parts (FREEDOM's
graph weights 0.1 / 0.9, RLMultimodalRec's single-modality variants). A model must not hand those
parts out by position: on a dataset with other modalities (lfm2k: text + audio; tiktok: image +
audio) that silently gives audio the image's or the text's part. The rule here:

- **image-like**: a name that is, or starts with, ``image``, ``visual``, ``img`` or ``v`` followed
  by ``_`` (``image``, ``visual``, ``image_clip``, ``v_feat``);
- **text-like**: likewise with ``text``, ``title``, ``description``, ``desc``, ``t``
  (``text``, ``title``, ``text_bert``);
- anything else (``audio``, ``audio_whisper``, ``genre``, ...) has no role, and a model that
  needs one asks for an explicit setting.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["image", "text"]
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "image": ("image", "visual", "img", "v"),
    "text": ("text", "title", "description", "desc", "t"),
}


def modality_role(name: str) -> Role | None:
    """``"image"``, ``"text"`` or ``None`` for a modality (feature file) name; see the module rule."""
    lowered = name.lower()
    for role, stems in ROLE_NAMES.items():
        if any(lowered == stem or lowered.startswith(stem + "_") for stem in stems):
            return role  # type: ignore[return-value]
    return None


def image_text_pair(modalities: list[str]) -> dict[Role, str] | None:
    """``{"image": name, "text": name}`` when ``modalities`` is exactly one image-like and one
    text-like modality (in any order), else ``None``."""
    roles = [modality_role(m) for m in modalities]
    if len(modalities) == 2 and sorted(r or "" for r in roles) == ["image", "text"]:
        return {r: m for r, m in zip(roles, modalities)}  # type: ignore[misc]
    return None


def describe_roles() -> str:
    """One line naming the recognised names of each role (for error messages)."""
    return "; ".join(f"{role}-like: {', '.join(stems)} (or <name>_...)" for role, stems in ROLE_NAMES.items())
