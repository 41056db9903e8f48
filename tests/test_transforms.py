"""Resizing and augmentation: shapes, hand-checked geometry, seeded determinism."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from featurelib.transforms import augment_image, normalize_op, record_rng, resize_image

# every op, each applied for sure: a change in any of them changes the variant
OPS = [normalize_op(o) for o in (
    {"op": "flip", "p": 1.0}, {"op": "rotate", "degrees": 20}, {"op": "translate"}, {"op": "crop"},
    {"op": "brightness"}, {"op": "contrast"}, {"op": "scale"}, {"op": "shear", "axis": "both", "fill": "constant"},
    {"op": "mask", "p": 1.0, "shape": "circle"}, {"op": "saturation"}, {"op": "hue"}, {"op": "noise"},
    {"op": "grayscale", "p": 0.5})]


def test_stretch_equals_cv2_resize(real_images):
    image = real_images["astronaut"]
    out = resize_image(image, (100, 60), mode="stretch", interpolation="area")
    np.testing.assert_array_equal(out, cv2.resize(image, (60, 100), interpolation=cv2.INTER_AREA))


def test_aspect_crop_keeps_the_centre(real_images):
    image = real_images["chelsea"]  # 300 x 451
    out = resize_image(image, (150, 150), mode="aspect_crop", interpolation="linear")
    assert out.shape == (150, 150, 3)
    scaled = cv2.resize(image, (226, 150), interpolation=cv2.INTER_LINEAR)  # shorter side -> 150
    np.testing.assert_array_equal(out, scaled[:, 38:188])


def test_pad_letterboxes_with_fill():
    image = np.full((10, 40, 3), 200, dtype=np.uint8)
    out = resize_image(image, (40, 40), mode="pad", interpolation="area", fill=(1, 2, 3))
    assert out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out[0, 0], [1, 2, 3])
    np.testing.assert_array_equal(out[20, 20], [200, 200, 200])
    assert (out[:15] == [1, 2, 3]).all() and (out[25:] == [1, 2, 3]).all()


@pytest.mark.parametrize("mode", ["stretch", "aspect_crop", "pad"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 57), (300, 2), (64, 64)])
def test_every_mode_returns_the_target_size(mode, shape):
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert resize_image(image, (24, 32), mode=mode).shape == (24, 32, 3)


def test_flip_is_exact():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = augment_image(image, [normalize_op({"op": "flip", "horizontal": True, "vertical": True, "p": 1.0})],
                        record_rng(0, "k"))
    np.testing.assert_array_equal(out, image[::-1, ::-1])


def test_augmentation_is_seeded_by_seed_and_key(real_images):
    image = resize_image(real_images["coffee"], (64, 64))
    a = augment_image(image, OPS, record_rng(42, "x.jpg#aug1"))
    b = augment_image(image, OPS, record_rng(42, "x.jpg#aug1"))
    c = augment_image(image, OPS, record_rng(43, "x.jpg#aug1"))
    d = augment_image(image, OPS, record_rng(42, "x.jpg#aug2"))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_augmentation_is_identical_in_another_process_with_another_hash_seed(real_images):
    image = resize_image(real_images["rocket"], (48, 48))
    here = augment_image(image, OPS, record_rng(7, "rocket#aug3"))
    code = ("import sys, numpy as np; from skimage import data; "
            "from featurelib.transforms import *; import json; "
            "ops=[normalize_op(o) for o in json.loads(sys.argv[1])]; "
            "im=resize_image(data.rocket(), (48, 48)); "
            "sys.stdout.buffer.write(augment_image(im, ops, record_rng(7, 'rocket#aug3')).tobytes())")
    import json

    out = subprocess.run([sys.executable, "-c", code, json.dumps(OPS)], capture_output=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}).stdout
    assert out == here.tobytes()


@pytest.mark.parametrize("op,message", [
    ({"op": "flip", "horizontal": "yes"}, "must be true or false"),
    ({"op": "crop", "scale": [0.9, 0.5]}, "scale must be"),
    ({"op": "rotate", "angle": 3}, r"unknown parameter\(s\) \['angle'\]"),
    ({"flip": True}, "with an 'op' key"),
])
def test_bad_ops(op, message):
    with pytest.raises(ValueError, match=message):
        normalize_op(op)


# --- every op: hand-computed and OpenCV references -------------------------------------------------

from featurelib.transforms import BUILTIN_OPS  # noqa: E402


class FixedDraws:
    """Stands in for a Generator: ``random`` returns the given uniforms, so an op's geometry is known."""

    def __init__(self, *uniforms: float, stream: int = 1234):
        self.uniforms, self.stream = list(uniforms), stream

    def random(self, n=None):
        if n is None:
            return self.uniforms.pop(0)
        taken, self.uniforms = self.uniforms[:n], self.uniforms[n:]
        return np.array(taken)

    def integers(self, low, high):
        return self.stream


def apply(image, draws, **op):
    return augment_image(image, [normalize_op(op)], draws)


#: each op with its amount at 0: the output must be the input, bit for bit
IDENTITIES = [
    {"op": "flip", "p": 0.0}, {"op": "rotate", "degrees": 0}, {"op": "rotate", "degrees": [0, 0]},
    {"op": "translate", "fraction": 0}, {"op": "scale", "factor": [1, 1]}, {"op": "shear", "degrees": 0},
    {"op": "crop", "scale": [1, 1]}, {"op": "mask", "size": [0, 0], "p": 1.0}, {"op": "brightness", "delta": 0},
    {"op": "contrast", "delta": 0}, {"op": "saturation", "delta": 0}, {"op": "hue", "delta": 0},
    {"op": "noise", "sigma": 0}, {"op": "grayscale", "p": 0},
]


def test_every_op_has_an_identity_case():
    assert {o["op"] for o in IDENTITIES} == set(BUILTIN_OPS)


@pytest.mark.parametrize("op", IDENTITIES, ids=lambda o: f"{o['op']}-{list(o.values())[1]}")
def test_an_op_whose_amount_is_zero_returns_its_input(op, real_images):
    image = resize_image(real_images["coffee"], (40, 56))
    out = augment_image(image, [normalize_op(op)], record_rng(1, "k#aug1"))
    np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("name", sorted(BUILTIN_OPS))
def test_an_op_draws_the_same_count_whether_it_applies_or_not(name, real_images):
    """Skipping an op (p = 0) must not shift the draws of the ops after it."""
    image = resize_image(real_images["rocket"], (24, 32))
    states = []
    for p in (0.0, 1.0):
        rng = record_rng(5, "x#aug1")
        augment_image(image, [normalize_op({"op": name, "p": p})], rng)
        states.append(rng.bit_generator.state)
    assert states[0] == states[1]


def test_right_angle_rotations_are_exact(real_images):
    square = resize_image(real_images["astronaut"], (64, 64))
    wide = resize_image(real_images["chelsea"], (30, 50))
    np.testing.assert_array_equal(apply(square, FixedDraws(0, 0), op="rotate", degrees=[90, 90]),
                                  cv2.rotate(square, cv2.ROTATE_90_COUNTERCLOCKWISE))
    np.testing.assert_array_equal(apply(square, FixedDraws(0, 0), op="rotate", degrees=[-90, -90]),
                                  cv2.rotate(square, cv2.ROTATE_90_CLOCKWISE))
    np.testing.assert_array_equal(apply(wide, FixedDraws(0, 0), op="rotate", degrees=[180, 180]),
                                  cv2.rotate(wide, cv2.ROTATE_180))
    # the general warp turns the same way: 89.9 degrees is nearly the exact quarter turn
    near = apply(square, FixedDraws(0, 0), op="rotate", degrees=[89.9, 89.9], fill="replicate")
    exact = cv2.rotate(square, cv2.ROTATE_90_COUNTERCLOCKWISE)
    assert np.abs(near[8:-8, 8:-8].astype(int) - exact[8:-8, 8:-8]).mean() < 4


def test_a_rectangular_mask_paints_exactly_its_box(real_images):
    image = resize_image(real_images["coffee"], (40, 60))
    out = apply(image, FixedDraws(0, 0.5, 0, 0), op="mask", size=[0.25, 0.25], position=[0.5, 0.5], p=1.0)
    expected = image.copy()
    expected[15:25, 22:37] = 0  # 0.25 * (40, 60) = 10 x 15 around the centre (20, 30)
    np.testing.assert_array_equal(out, expected)
    # a random position keeps the whole box inside: always exactly 10 x 15 painted pixels
    flat = np.full((40, 60, 3), 200, np.uint8)
    for n in range(20):
        out = augment_image(flat, [normalize_op({"op": "mask", "size": [0.25, 0.25], "p": 1.0, "color": [1, 2, 3]})],
                            record_rng(n, "k"))
        assert (out == [1, 2, 3]).all(axis=2).sum() == 150


def test_a_circular_mask_paints_exactly_its_disc():
    flat = np.full((10, 10, 3), 255, np.uint8)
    out = apply(flat, FixedDraws(0, 0, 0, 0), op="mask", shape="circle", size=[0.4, 0.4], position=[0.0, 1.0], p=1)
    painted = (out == 0).all(axis=2)
    # side 4 in the top-right corner; pixel centres within 2 of (1.5, 1.5): the 4x4 square minus its corners
    expected = np.zeros((10, 10), bool)
    expected[0:4, 6:10] = True
    for y, x in ((0, 6), (0, 9), (3, 6), (3, 9)):
        expected[y, x] = False
    np.testing.assert_array_equal(painted, expected)


def test_grayscale_equals_opencv_on_three_channels(real_images):
    image = real_images["astronaut"]
    out = apply(image, FixedDraws(0), op="grayscale", p=1.0)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_saturation_zero_is_the_gray_image_and_one_the_image(real_images):
    image = resize_image(real_images["flower"], (32, 48))
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    out = apply(image, FixedDraws(0, 0.0), op="saturation", delta=1.0)  # factor 1 - 1 = 0
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(apply(image, FixedDraws(0, 0.5), op="saturation", delta=1.0), image)


def test_hue_turns_colours_and_leaves_grays_alone():
    primaries = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [90, 90, 90]]], np.uint8)
    half_turn = apply(primaries, FixedDraws(0, 1.0), op="hue", delta=0.5)  # +128 of 256 steps
    # red -> cyan, green -> magenta, blue -> yellow; 8-bit hue (1.4 degrees a step) costs up to 3 levels
    expected = np.array([[[0, 255, 255], [255, 0, 255], [255, 255, 0], [90, 90, 90]]])
    assert np.abs(half_turn.astype(int) - expected).max() <= 3
    np.testing.assert_array_equal(half_turn[0, 3], [90, 90, 90])


def test_noise_has_the_stated_sigma_and_is_seeded():
    flat = np.full((200, 200, 3), 128, np.uint8)
    out = augment_image(flat, [normalize_op({"op": "noise", "sigma": 10})], record_rng(3, "k"))
    diff = out.astype(float) - 128
    assert abs(diff.mean()) < 0.2 and abs(diff.std() - 10) < 0.2
    np.testing.assert_array_equal(out, augment_image(flat, [normalize_op({"op": "noise", "sigma": 10})],
                                                     record_rng(3, "k")))


def test_scale_zooms_about_the_centre_and_fills_beyond(real_images):
    image = resize_image(real_images["chelsea"], (64, 64), mode="aspect_crop")
    zoom_in = apply(image, FixedDraws(0, 0), op="scale", factor=[2, 2])
    centre = cv2.resize(image[16:48, 16:48], (64, 64), interpolation=cv2.INTER_LINEAR)
    assert np.abs(zoom_in.astype(int) - centre).mean() < 3
    zoom_out = apply(image, FixedDraws(0, 0), op="scale", factor=[0.5, 0.5], fill="constant", fill_color=[7, 8, 9])
    assert (zoom_out[:10, :10] == [7, 8, 9]).all() and (zoom_out[-10:, -10:] == [7, 8, 9]).all()
    assert np.abs(zoom_out[16:48, 16:48].astype(int) - cv2.resize(image, (32, 32), interpolation=cv2.INTER_AREA)
                  ).mean() < 8


def test_shear_keeps_the_centre_line_and_slants_the_rest(real_images):
    image = resize_image(real_images["rocket"], (33, 41))  # odd sides: row 16 and column 20 are the centre
    along_x = apply(image, FixedDraws(0, 1.0, 0.5), op="shear", degrees=30, fill="constant")
    np.testing.assert_array_equal(along_x[16], image[16])
    assert not np.array_equal(along_x[0], image[0])
    along_y = apply(image, FixedDraws(0, 0.5, 1.0), op="shear", degrees=30, axis="y")
    np.testing.assert_array_equal(along_y[:, 20], image[:, 20])
    assert not np.array_equal(along_y[:, 0], image[:, 0])


@pytest.mark.parametrize("fill", ["reflect_101", "reflect", "replicate", "constant"])
def test_fill_modes_match_opencv_borders(fill, real_images):
    image = resize_image(real_images["coffee"], (30, 40))
    out = apply(image, FixedDraws(0, 1.0, 0.5), op="translate", fraction=0.25, fill=fill, fill_color=[10, 20, 30])
    border = {"reflect_101": cv2.BORDER_REFLECT_101, "reflect": cv2.BORDER_REFLECT,
              "replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}[fill]
    # dx = +0.25 * 40 = 10 columns to the right: the first 10 come from beyond the left border
    padded = cv2.copyMakeBorder(image, 0, 0, 10, 0, border, value=(10, 20, 30))
    np.testing.assert_array_equal(out, padded[:, :40])


@pytest.mark.parametrize("op,message", [
    ({"op": "rotate", "fill": "mirror"}, "fill must be one of reflect_101, reflect, replicate, constant; got 'mirror'"),
    ({"op": "hue", "delta": 0.7}, r"op 'hue': delta must be a number in \[0, 0.5\]"),
    ({"op": "mask", "shape": "star"}, "shape must be one of rect, circle"),
    ({"op": "mask", "position": [0.5, 2]}, "position must be 'random' or"),
    ({"op": "shear", "axis": "z"}, "axis must be one of x, y, both"),
    ({"op": "scale", "factor": [0, 1]}, r"factor must be \[low, high\] with 0 < low"),
    ({"op": "rotate", "interpolation": "area"}, "interpolation must be one of nearest, linear, cubic"),
    ({"op": "mask", "color": [0, 0, 256]}, "color must be three integers"),
    ({"op": "blur"}, "unknown op 'blur'; known: flip, rotate"),
    ({"op": "noise", "std": 3}, r"unknown parameter\(s\) \['std'\]; known: \['p', 'sigma'\]"),
])
def test_bad_op_parameters_name_what_is_valid(op, message):
    with pytest.raises(ValueError, match=message):
        normalize_op(op)


def test_augment_doc_holds_the_generated_op_reference():
    """docs/AUGMENT.md lists every op and parameter with the defaults the code uses."""
    import pathlib

    from featurelib.transforms import ops_reference

    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "AUGMENT.md").read_text()
    assert ops_reference() in doc


def test_the_seed_changes_the_variants_never_the_originals(real_images):
    from featurelib.compute import make_variants
    from featurelib.spec import RunSpec

    image = resize_image(real_images["astronaut"], (32, 32))
    doc = {"spec_version": 1, "image": {"size": [32, 32]}, "features": [{"name": "color_stats"}],
           "augment": {"copies": 2, "ops": [{"op": "rotate"}, {"op": "noise"}]}}
    one, two = (make_variants(RunSpec.from_dict({**doc, "seed": seed}), image, "a/b.jpg", "train")
                for seed in (1, 2))
    assert [v.key for v in one] == [v.key for v in two] == ["a/b.jpg", "a/b.jpg#aug1", "a/b.jpg#aug2"]
    np.testing.assert_array_equal(one[0].image, image)
    np.testing.assert_array_equal(two[0].image, image)
    assert not np.array_equal(one[1].image, two[1].image) and not np.array_equal(one[2].image, two[2].image)
    val = make_variants(RunSpec.from_dict({**doc, "seed": 1}), image, "a/b.jpg", "val")
    assert len(val) == 1  # only augment.splits (train by default) get variants


def test_brightness_and_contrast_are_their_formulas_per_value(real_images):
    image = resize_image(real_images["coffee"], (30, 40))
    bright = apply(image, FixedDraws(0, 1.0), op="brightness", delta=0.5)  # factor 1.5
    np.testing.assert_array_equal(bright, np.clip(np.rint(image * 1.5), 0, 255).astype(np.uint8))
    contrast = apply(image, FixedDraws(0, 0.0), op="contrast", delta=0.4)  # factor 0.6
    mean = image.reshape(-1, 3).mean(axis=0)
    np.testing.assert_array_equal(contrast, np.clip(np.rint((image - mean) * 0.6 + mean), 0, 255).astype(np.uint8))


def test_the_augment_doc_example_is_a_valid_spec():
    import pathlib
    import re

    import yaml

    from featurelib.spec import RunSpec

    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "AUGMENT.md").read_text()
    example = yaml.safe_load(re.search(r"```yaml\n(.*?)```", doc, re.S).group(1))
    spec = RunSpec.from_dict({"spec_version": 1, "features": [{"name": "color_stats"}], **example})
    assert spec.augment.copies == 4 and [op["op"] for op in spec.augment.ops][:2] == ["flip", "rotate"]


def test_the_extending_guide_op_example_registers_a_working_op():
    import pathlib
    import re

    guide = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "EXTENDING.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", guide, re.S) if "register_op" in block)
    exec(compile(code, "EXTENDING.md", "exec"), {})
    image = resize_image(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8), (20, 30))
    np.testing.assert_array_equal(apply(image, FixedDraws(0.0), op="invert", p=0.5), 255 - image)
    np.testing.assert_array_equal(apply(image, FixedDraws(0.9), op="invert", p=0.5), image)
    with pytest.raises(ValueError, match="already registered"):
        from featurelib.transforms import Param, register_op
        register_op("invert", lambda image, rng: image, {"p": Param(1.0, float, "")}, doc="", identity="")


def test_a_circular_mask_inside_a_photo_equals_the_numpy_disc(real_images):
    from featurelib.transforms import disc

    image = resize_image(real_images["chelsea"], (60, 80))
    out = apply(image, FixedDraws(0, 0.5, 0, 0), op="mask", shape="circle", size=[0.5, 0.5], position=[0.4, 0.3],
                color=[9, 200, 30], p=1)
    expected = image.copy()
    side = 30  # 0.5 * min(60, 80); centre (24, 24) -> top-left (9, 9)
    expected[9 : 9 + side, 9 : 9 + side][disc(side)] = [9, 200, 30]
    np.testing.assert_array_equal(out, expected)
