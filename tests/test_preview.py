"""``featurize preview``: the tiles are the pixels a run stores, the pick is seeded, mistakes exit 2."""

from __future__ import annotations


import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from featurelib.cli import main
from featurelib.preview import read_layout

AUGMENT = {"copies": 3, "ops": [
    {"op": "flip"}, {"op": "rotate", "degrees": 25, "fill": "constant", "fill_color": [0, 80, 160]},
    {"op": "scale", "factor": [0.8, 1.25]}, {"op": "hue", "delta": 0.1}, {"op": "saturation", "delta": 0.5},
    {"op": "noise", "sigma": 5}, {"op": "mask", "p": 0.7}]}


@pytest.fixture(scope="module")
def photo_dir(real_images, tmp_path_factory):
    """Twelve JPEG crops of real photographs in three classes."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    rng = np.random.default_rng(0)
    for label, names in {"animal": ("chelsea", "coffee"), "place": ("china", "rocket"),
                         "person": ("astronaut", "flower")}.items():
        (root / label).mkdir(parents=True)
        for name in names:
            image = real_images[name]
            for n in range(2):
                top, left = (int(rng.integers(0, s // 4)) for s in image.shape[:2])
                crop = image[top : top + image.shape[0] * 3 // 4, left : left + image.shape[1] * 3 // 4]
                ok, data = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
                (root / label / f"{name}-{n}.jpg").write_bytes(data.tobytes())
    return root


def stored_pixels(out, size):
    table = pq.read_table(sorted((out / "parquet").glob("*.parquet")), columns=["key", "pixels"])
    pixels = table.column("pixels").combine_chunks().values.to_numpy().reshape(-1, *size, 3)
    return dict(zip(table.column("key").to_pylist(), pixels))


def test_preview_tiles_are_the_stored_pixels_and_the_pick_is_seeded(photo_dir, spec_file, tmp_path, capsys):
    size = (40, 48)  # enlarged x2 in the preview: checks the nearest-neighbour enlargement too
    spec = spec_file(image={"size": list(size), "resize": "aspect_crop"}, augment=AUGMENT,
                     split={"train": 0.7, "val": 0.3, "test": 0.0}, output={"shards": 2, "pixels": True})
    out = tmp_path / "out"
    assert main(["run", "--spec", str(spec), "--input", str(photo_dir), "--output", str(out)]) == 0
    stored = stored_pixels(out, size)
    assert sum("#aug" in key for key in stored) >= 3 * 6
    # another shard count and one worker: the same pixels for every key
    again = tmp_path / "again"
    assert main(["run", "--spec", str(spec), "--input", str(photo_dir), "--output", str(again), "--shards", "5",
                 "--workers", "1"]) == 0
    resharded = stored_pixels(again, size)
    assert resharded.keys() == stored.keys()
    for key, pixels in stored.items():
        np.testing.assert_array_equal(resharded[key], pixels, err_msg=key)

    png = tmp_path / "preview.png"
    assert main(["preview", "--spec", str(spec), "--input", str(photo_dir), "--n", "4", "--out", str(png)]) == 0
    assert f"wrote {png}: 4 source(s), 4 with 3 variant(s) each" in capsys.readouterr().out
    grid = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    layout = read_layout(str(png))
    assert len(layout) == 4 * 4 and {t["aug_index"] for t in layout} == {0, 1, 2, 3}
    assert all(t["split"] == "train" for t in layout)  # sources that get variants come first
    for tile in layout:
        k = tile["scale"]
        assert k == 2
        shown = grid[tile["top"] : tile["top"] + tile["height"], tile["left"] : tile["left"] + tile["width"]]
        np.testing.assert_array_equal(shown[::k, ::k], stored[tile["key"]], err_msg=tile["key"])
        np.testing.assert_array_equal(shown, np.repeat(np.repeat(stored[tile["key"]], k, 0), k, 1))
        assert tile["label"] == tile["source_key"].split("/")[0]
    # the same spec picks the same sources; another seed picks others (and other variants)
    again = tmp_path / "again.png"
    assert main(["preview", "--spec", str(spec), "--input", str(photo_dir), "--n", "4", "--out", str(again)]) == 0
    assert read_layout(str(again)) == layout
    other = spec_file(image={"size": list(size), "resize": "aspect_crop"}, augment=AUGMENT, seed=9)
    assert main(["preview", "--spec", str(other), "--input", str(photo_dir), "--n", "4", "--out", str(again)]) == 0
    assert [t["key"] for t in read_layout(str(again))] != [t["key"] for t in layout]


def test_preview_without_augmentation_shows_originals_and_skips_rejects(photo_dir, spec_file, tmp_path, capsys):
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    for path in sorted(photo_dir.rglob("*.jpg"))[:3]:
        (root / "a" / path.name).write_bytes(path.read_bytes())
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "a" / "notes.txt").write_text("hello")
    png = tmp_path / "p.png"
    assert main(["preview", "--spec", str(spec_file()), "--input", str(root), "--n", "10", "--out", str(png)]) == 0
    said = capsys.readouterr().out
    assert "3 source(s), 0 with 0 variant(s) each" in said and "2 rejected source(s) left out" in said
    assert sorted(t["aug_index"] for t in read_layout(str(png))) == [0, 0, 0]


@pytest.mark.parametrize("argv,message", [
    (["--n", "0"], "--n must be at least 1"),
    (["--out", "/nonexistent-folder/p.png"], "folder /nonexistent-folder does not exist"),
    (["--input", "/nonexistent-input"], "nonexistent-input"),
])
def test_preview_mistakes_exit_2_with_one_message(argv, message, photo_dir, spec_file, tmp_path, capsys):
    base = ["preview", "--spec", str(spec_file(augment=AUGMENT)), "--input", str(photo_dir),
            "--out", str(tmp_path / "p.png")]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_preview_of_a_bad_spec_lists_the_op_problem(photo_dir, spec_file, tmp_path, capsys):
    spec = spec_file(augment={"copies": 1, "ops": [{"op": "hue", "delta": 2}]})
    assert main(["preview", "--spec", str(spec), "--input", str(photo_dir), "--out", str(tmp_path / "p.png")]) == 2
    assert "op 'hue': delta must be a number in [0, 0.5], got 2" in capsys.readouterr().err
