"""Item images -> image_feat.npy (prismrec.data.images, `prismrec build --item-images`), with a tiny
randomly initialised TorchScript backbone on generated images."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from prismrec.cli import app
from prismrec.data import DatasetError, load_dataset
from prismrec.data.build import build_dataset
from prismrec.data.images import MEAN, STD, encode_images, load_image_encoder, preprocess
from prismrec.errors import ConfigError


class TinyBackbone(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3, stride=2)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(torch.relu(self.conv(x)))  # (B, 5, 1, 1): flattened to 5-d vectors


@pytest.fixture(params=["export", "torchscript"])
def encoder_file(tmp_path, request):
    torch.manual_seed(0)
    model = TinyBackbone().eval()
    if request.param == "export":
        path = tmp_path / "backbone.pt2"
        program = torch.export.export(model, (torch.randn(2, 3, 32, 32),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(path))
    else:
        path = tmp_path / "backbone.pt"
        with pytest.warns(DeprecationWarning):
            torch.jit.save(torch.jit.script(model), str(path))
    return path


def _raw(tmp_path, items=("p", "q", "r")):
    rows = [(u, i) for u in "abcd" for i in items]
    pd.DataFrame(rows, columns=["user", "item"]).to_csv(tmp_path / "raw.csv", index=False)
    return tmp_path / "raw.csv"


def _images(folder, items, size=(40, 30)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    for n, item in enumerate(items):
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{item}.{'png' if n % 2 else 'jpg'}")
    return folder


def test_preprocess_resizes_crops_and_normalises(tmp_path):
    Image.new("RGB", (64, 32), (255, 0, 128)).save(tmp_path / "a.png")
    x = preprocess(tmp_path / "a.png", size=16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    expected = (np.array([255, 0, 128], dtype=np.float32) / 255 - MEAN) / STD
    np.testing.assert_allclose(x[:, 8, 8], expected, rtol=1e-5)


def test_build_encodes_item_images_in_item_id_order(tmp_path, encoder_file):
    folder = _images(tmp_path / "img", ["r", "p", "q", "unused"])
    out = build_dataset(_raw(tmp_path), tmp_path / "d", min_count=3, item_images=folder,
                        image_encoder=str(encoder_file), image_size=32)
    data = load_dataset(out)
    order = pd.read_csv(out / "i_id_mapping.csv", sep="\t").item.tolist()
    encoder = load_image_encoder(str(encoder_file))
    paths = {p.stem: p for p in folder.iterdir()}
    expected = encode_images([paths[i] for i in order], encoder, size=32)
    assert data.features["image"].shape == (3, 5)
    np.testing.assert_allclose(data.features["image"].numpy(), expected, rtol=1e-6)
    image = json.loads((out / "manifest.json").read_text())["features"]["image"]
    assert image["encoder"] == str(encoder_file) and image["images_found"] == 3 and image["image_size"] == 32
    assert image["source"] == str(folder.resolve()) and "sha256" not in image


def test_images_listed_in_a_table_and_a_missing_image(tmp_path, encoder_file):
    folder = _images(tmp_path / "img", ["p", "q"])
    table = pd.DataFrame({"item": ["p", "q"], "image": [f"img/{p.name}" for p in sorted(folder.iterdir())]})
    table.to_csv(tmp_path / "images.csv", index=False)
    with pytest.raises(DatasetError, match=r"1 of 3 kept items have no vector \(first: 'r'\)"):
        build_dataset(_raw(tmp_path), tmp_path / "e", min_count=3, item_images=tmp_path / "images.csv",
                      image_encoder=str(encoder_file), image_size=32)
    out = build_dataset(_raw(tmp_path), tmp_path / "m", min_count=3, item_images=tmp_path / "images.csv",
                        image_encoder=str(encoder_file), image_size=32, missing_features="mean")
    mask = np.load(out / "image_mask.npy")
    assert mask.tolist() == [True, True, False]


def test_bad_images_and_encoders_are_clear_errors(tmp_path, encoder_file):
    folder = _images(tmp_path / "img", ["p", "q", "r"])
    (folder / "q.jpg").unlink(missing_ok=True)
    (folder / "q.png").unlink(missing_ok=True)
    (folder / "q.jpg").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"q\.jpg: not a readable image"):
        build_dataset(_raw(tmp_path), tmp_path / "a", min_count=3, item_images=folder,
                      image_encoder=str(encoder_file))
    with pytest.raises(ConfigError, match="needs --image-encoder"):
        build_dataset(_raw(tmp_path), tmp_path / "b", min_count=3, item_images=folder)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a TorchScript file"):
        load_image_encoder(str(tmp_path / "junk.pt"))
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"not an exported program \(\.pt2\)"):
        load_image_encoder(str(tmp_path / "junk.pt2"))
    with pytest.raises(ConfigError, match="no such file"):
        load_image_encoder(str(tmp_path / "none.pt"))
    with pytest.raises(DatasetError, match="none of the 3 kept items has an image"):
        build_dataset(_raw(tmp_path), tmp_path / "c", min_count=3, item_images=_images(tmp_path / "other", ["x"]),
                      image_encoder=str(encoder_file))
    assert not any(p.name in ("a", "b", "c") for p in tmp_path.iterdir())


def test_an_encoder_that_refuses_the_image_size(tmp_path, encoder_file):
    folder = _images(tmp_path / "img", ["p", "q", "r"])
    if encoder_file.suffix == ".pt2":  # exported for 32 x 32 crops
        with pytest.raises(ConfigError, match=r"refused a batch of shape \(3, 3, 16, 16\).*--image-size 16"):
            build_dataset(_raw(tmp_path), tmp_path / "d", min_count=3, item_images=folder,
                          image_encoder=str(encoder_file), image_size=16)
    else:  # TorchScript takes any size
        build_dataset(_raw(tmp_path), tmp_path / "d", min_count=3, item_images=folder,
                      image_encoder=str(encoder_file), image_size=16)


def test_torchvision_encoder_without_torchvision_says_what_to_do():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs torchvision.*TorchScript"):
            load_image_encoder("torchvision:resnet50")
    else:
        with pytest.raises(ConfigError, match="no model 'nosuchnet'"):
            load_image_encoder("torchvision:nosuchnet")


def test_cli_build_item_images(tmp_path, encoder_file):
    folder = _images(tmp_path / "img", ["p", "q", "r"])
    result = CliRunner().invoke(app, ["build", "--interactions", str(_raw(tmp_path)), "--out", str(tmp_path / "c"),
                                      "--min-count", "3", "--item-images", str(folder),
                                      "--image-encoder", str(encoder_file), "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert load_dataset(tmp_path / "c").features["image"].shape == (3, 5)
