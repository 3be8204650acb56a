"""Bad image inputs under a backbone's protocol: tiny images, greyscale/RGBA mixes, corrupt files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dlforge.data import prepare
from dlforge.core.errors import DataError
from dlforge.recipe.io import load_recipe


def _folder(tmp_path, *, corrupt: bool):
    rows = ["file,label"]
    for i in range(6):
        label = "a" if i % 2 else "b"
        if i % 3 == 0:
            img = Image.new("L", (12, 20), 40)  # greyscale, smaller than the 224 crop
        elif i % 3 == 1:
            img = Image.new("RGBA", (300, 260), (255, 0, 0, 0))  # fully transparent: must read as white
        else:
            img = Image.new("RGB", (400, 300), (0, 0, 255))
        img.save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label}")
    if corrupt:
        (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
        rows.append("bad.jpg,a")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "labels.csv"


def _recipe(csv, **prep):
    return load_recipe({"data": {"source": str(csv), "split": {"val": 0.0, "test": 0.0, "stratify": False}},
                        "inputs": [{"name": "file", "type": "image", "encoder": {"name": "mobilenet_v2"},
                                    "preprocessing": prep}],
                        "outputs": [{"name": "label", "type": "category"}]})


def test_small_grey_rgba_mix_becomes_rgb_224_with_counts(tmp_path):
    prepared = prepare(_recipe(_folder(tmp_path, corrupt=False)))
    x = prepared.splits["train"].x["file"]
    assert x.shape == (6, 3, 224, 224)
    report = prepared.report["images"]["file"]
    assert report["enlarged_smaller_than_size"] == 2  # the two 12x20 greyscale images
    assert report["converted_to_rgb"] == 4  # two greyscale + two RGBA
    # Undo ImageNet normalisation: the transparent RGBA image must be white, not black.
    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    pixels = (x.numpy() * std + mean) * 255
    # Row order is the split's, so find the images by colour.
    means = pixels.mean((2, 3))
    assert any(np.allclose(m, [255, 255, 255], atol=1) for m in means)
    assert any(np.allclose(m, [40, 40, 40], atol=1) for m in means)


def test_corrupt_file_errors_naming_it_or_is_skipped_and_counted(tmp_path):
    csv = _folder(tmp_path, corrupt=True)
    with pytest.raises(DataError) as info:
        prepare(_recipe(csv))
    assert "bad.jpg" in info.value.render() and "on_bad_file" in info.value.render()
    prepared = prepare(_recipe(csv, on_bad_file="skip"))
    assert len(prepared.splits["train"]) == 6
    assert prepared.report["images"]["file"]["skipped_bad_files"] == 1
