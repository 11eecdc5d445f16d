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

Helpers by what a model needs: :func:`role_weights` (per-modality weights: FREEDOM, DRAGON
``mm_weights``), :func:`modality_parts` (the part each modality plays: SMORE's kNN sizes, MMGCN's
feature MLP, ``modality_roles``), :func:`role_order` (image first: LGMRec's ``hcl_order``).
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


def role_weights(
    model: str, modalities: list[str], weights: list[float] | None, image_weight: float,
    setting: str = "mm_weights",
) -> tuple[float, ...]:
    """Per-modality mixing weights in ``modalities`` order, by role, for models whose reference
    weighs an image and a text graph differently (FREEDOM, DRAGON: ``mm_image_weight``).

    ``weights`` (the explicit ``setting``) when given (checked: one per modality, non-negative,
    summing to 1); else 1 for a single modality, or ``image_weight`` for the image-like and
    ``1 − image_weight`` for the text-like one of an image + text pair (any order). Any other
    modalities have no reference weighting: a :class:`~prismrec.errors.ConfigError` names
    ``setting`` with an example.
    """
    from prismrec.errors import ConfigError
    from prismrec.graph import modality_weights

    if weights is not None or len(modalities) == 1:
        return modality_weights(weights, modalities)
    if not 0.0 <= image_weight <= 1.0:
        raise ConfigError(f"{model}: image_weight must be in [0, 1], got {image_weight}")
    pair = image_text_pair(modalities)
    if pair is None:
        equal = [round(1 / len(modalities), 3)] * (len(modalities) - 1)
        example = ",".join(f"{w:g}" for w in [*equal, round(1 - sum(equal), 3)])
        raise ConfigError(
            f"{model}: set {setting} (one weight per modality of {modalities}, in that order, summing to 1, "
            f"e.g. --set {setting}=[{example}]): these "
            f"modalities are not one image-like and one text-like, so the reference's image/text weights "
            f"have no owner by name ({describe_roles()})"
        )
    return tuple(image_weight if m == pair["image"] else 1.0 - image_weight for m in modalities)


def modality_parts(
    model: str, modalities: list[str], parts: list[str] | None, setting: str = "modality_roles",
    settings: str = "image/text settings",
) -> list[Role]:
    """The reference part (``"image"`` or ``"text"``) each of ``modalities`` plays, in that order,
    for models whose reference gives its image and its text modality different settings (SMORE's
    ``image_knn_k``/``text_knn_k``, MMGCN's feature MLP).

    ``parts`` (the explicit ``setting``) when given (checked: one ``image`` or ``text`` per
    modality); else ``["image"]`` for a single modality (the reference's first slot), or the roles
    by name of an image + text pair (any order). Any other modalities raise a
    :class:`~prismrec.errors.ConfigError` naming ``setting`` (``settings`` says what it decides).
    """
    from prismrec.errors import ConfigError

    example = ",".join(["image"] + ["text"] * (len(modalities) - 1))
    if parts is not None:
        if len(parts) != len(modalities) or any(p not in ROLE_NAMES for p in parts):
            raise ConfigError(
                f"{model}: {setting} needs one of image/text per modality of {modalities} (in that order), "
                f"got {list(parts)}; e.g. --set {setting}=[{example}]"
            )
        return list(parts)  # type: ignore[arg-type]
    if len(modalities) == 1:
        return ["image"]
    if image_text_pair(modalities) is None:
        raise ConfigError(
            f"{model}: set {setting} (the reference part, image or text, each of {modalities} plays, in that "
            f"order, e.g. --set {setting}=[{example}]): these modalities are not one image-like and one "
            f"text-like, so the reference's {settings} have no owner by name ({describe_roles()})"
        )
    return [modality_role(m) for m in modalities]  # type: ignore[misc]


def role_order(model: str, modalities: list[str], order: list[str] | None, setting: str) -> list[str]:
    """``modalities`` in the order a reference takes them, image first (LGMRec's ``L_hcl`` pair):
    ``order`` (the explicit ``setting``; checked: the used modalities, each once), else the pair
    by name for an image + text pair (either order), else a single modality as is. Any other
    modalities raise a :class:`~prismrec.errors.ConfigError` naming ``setting``."""
    from prismrec.errors import ConfigError

    if order is not None:
        if sorted(order) != sorted(modalities):
            raise ConfigError(f"{model}: {setting} must list the used modalities {modalities} once each, "
                              f"got {list(order)}; e.g. --set {setting}=[{','.join(modalities)}]")
        return list(order)
    if len(modalities) == 1:
        return list(modalities)
    pair = image_text_pair(modalities)
    if pair is None:
        raise ConfigError(
            f"{model}: set {setting} (the order of {modalities} that takes the reference's image-then-text "
            f"places, e.g. --set {setting}=[{','.join(modalities)}]): these modalities are not one image-like "
            f"and one text-like, so the reference's order has no owner by name ({describe_roles()})"
        )
    return [pair["image"], pair["text"]]
