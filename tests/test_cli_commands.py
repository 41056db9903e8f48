"""``featurize validate``, ``featurize plan`` and ``featurize extractors`` (issue #12): exact outputs and
messages, as a new user meets them (typos in the spec, a missing input, a foreign output, an unknown
extractor), and nothing written anywhere."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from conftest import write_spec
from featurelib import catalog, cli, registry
from featurelib.planning import human_bytes

KNOWN = ", ".join(registry.names())
TOP_KEYS = ("augment, decode, dedup, execution, failures, features, image, input, labels, output, seed, "
            "spec_version, split")


def run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


# --- validate ----------------------------------------------------------------------------------------

TYPOS = """\
spec_version: 1
seed: 42
image:
  size: [32, 32]
  resize: strech
features:
  - name: color_stats
  - name: color_hist
    params: {bins: 999, colour_space: hsv}
  - name: hogg
split: {train: 0.8, val: 0.1, test: 0.2}
outptu: {path: out}
"""


def test_validate_lists_every_problem_with_its_line_and_key_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(TYPOS)
    code, out, err = run(["validate", "spec.yaml"], capsys)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "spec.yaml: 6 problems",
        "  spec.yaml:5: image.resize: must be one of ['stretch', 'aspect_crop', 'pad'], got 'strech'",
        "  spec.yaml:9: features[1].params.colour_space: unknown parameter of color_hist; known: bins, color_space; "
        "did you mean 'color_space'?",
        "  spec.yaml:9: features[1].params.bins: each bin count must be an integer in [1, 256], got 999",
        f"  spec.yaml:10: features[2].name: unknown extractor 'hogg'; known: {KNOWN}; did you mean 'hog'?",
        "  spec.yaml:11: split: split fractions must sum to 1, got {'train': 0.8, 'val': 0.1, 'test': 0.2}",
        f"  spec.yaml:12: outptu: unknown key; allowed: {TOP_KEYS}; did you mean 'output'?",
    ]


def test_validate_ok_says_features_dim_and_size_and_creates_nothing(digits_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_spec(tmp_path / "spec.yaml", input={"path": str(digits_dir)}, output={"path": "out/new", "shards": 2})
    code, out, err = run(["validate", "spec.yaml"], capsys)
    # color_stats 9 + color_hist 4 x 4 x 4 + intensity_hist 16
    assert (code, out, err) == (0, "spec.yaml: OK (3 features, dim 89 at image size 32x32)\n", "")
    assert tree(tmp_path) == ["spec.yaml"]


def test_validate_without_paths_notes_what_it_did_not_check(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("image:\n  size: [32, 32]\n  size: [64, 48]\nfeatures:\n  - name: hu_moments\n")
    code, out, _ = run(["validate", "spec.yaml"], capsys)
    assert code == 0
    assert out.splitlines() == [
        "spec.yaml: OK (1 feature, dim 7 at image size 64x48)",
        "  spec.yaml:3: warning: image.size: repeats the key of line 2; YAML keeps this later value only",
        "  note: no input to check: set input.path in the spec or pass --input",
        "  note: no output to check: set output.path in the spec or pass --output",
    ]


def test_validate_reports_bad_yaml_with_its_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text("features:\n  - name: hog\n  params: {bins: 3\n")
    code, _, err = run(["validate", "spec.yaml"], capsys)
    assert code == 2
    assert re.fullmatch(r"spec\.yaml: 1 problem\n  spec\.yaml:3: not valid YAML: .+\n", err), err
    code, _, err = run(["validate", "missing.yaml"], capsys)
    assert (code, err) == (2, "missing.yaml: 1 problem\n  missing.yaml: cannot read spec: No such file or directory\n")
    (tmp_path / "latin1.yaml").write_bytes("seed: 1 # \xe9t\xe9\n".encode("latin-1"))
    code, _, err = run(["validate", "latin1.yaml"], capsys)
    assert (code, err) == (2, "latin1.yaml: 1 problem\n  latin1.yaml: cannot read spec: not UTF-8 text (byte 10)\n")
    for command in (["run", "--spec", "latin1.yaml"], ["plan", "--spec", "latin1.yaml"]):  # one line, no traceback
        code, _, err = run(command, capsys)
        assert (code, err) == (2, "featurize: error: cannot read spec 'latin1.yaml': not UTF-8 text (byte 10)\n")


@pytest.mark.parametrize("text,problems", [
    ("features:\n  - hog\n", ["spec.yaml:2: features[0]: must be a mapping, got str (write '- name: EXTRACTOR', "
                              "with 'params:' under it)"]),
    ("- a\n- b\n", ["spec.yaml: the spec must be a mapping, got list"]),
    ("seed: 1\n", [f"spec.yaml: features: must be a non-empty list; known extractors: {registry.names()}"]),
])
def test_validate_a_spec_of_the_wrong_shape(text, problems, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(text)
    code, _, err = run(["validate", "spec.yaml"], capsys)
    assert (code, err.splitlines()[1:]) == (2, [f"  {p}" for p in problems])


@pytest.fixture
def paths(tmp_path, digits_dir):
    """Inputs and outputs a new user gets wrong."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("hello")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "bad.csv").write_text("path,label\na.png,zero\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "_manifest.json").write_text(json.dumps({"spec_fingerprints": {"run": "0123456789abcdef"}}))
    return tmp_path


@pytest.mark.parametrize("flags,message", [
    (["--input", "none"], "spec.yaml: --input: input 'none' does not exist"),
    (["--input", "file.txt"], "spec.yaml: --input: input 'file.txt' is a file, not a folder or a .csv/.parquet "
                              "manifest"),
    (["--input", "empty"], "spec.yaml: --input: input folder 'empty' holds no files"),
    (["--input", "bad.csv"], "spec.yaml: --input: input manifest 'bad.csv' has no 'uri' column (columns: "
                             "['path', 'label'])"),
    (["--output", "foreign"], "spec.yaml: --output: output folder 'foreign' is not empty and holds no featurelib "
                              "run (found ['notes.txt']); choose an empty or new folder"),
    (["--output", "file.txt"], "spec.yaml: --output: output 'file.txt' exists and is not a folder"),
    (["--output", "file.txt/out"], "spec.yaml: --output: output 'file.txt/out' cannot be created: "
                                   "'{tmp}/file.txt' is not a folder"),
    (["--output", "nosuch://bucket/out"], "spec.yaml: --output: output 'nosuch://bucket/out' cannot be opened: "
                                          "Protocol not known: nosuch"),
    (["--output", "other"], r"spec.yaml: --output: output 'other' holds a different run \(run_fingerprint "
                            r"0123456789ab\.\.\., this spec [0-9a-f]{{12}}\.\.\.\); pass --overwrite to replace it, "
                            r"or choose another --output"),
])
def test_validate_refuses_inputs_and_outputs_a_run_would_refuse(flags, message, paths, digits_dir, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(paths)
    write_spec(paths / "spec.yaml", input={"path": str(digits_dir)}, output={"path": "new"})
    before = tree(paths)
    code, out, err = run(["validate", "spec.yaml", *flags], capsys)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0] == "spec.yaml: 1 problem"
    expected = message.format(tmp=paths)
    assert re.fullmatch(expected, lines[1].strip()) if "\\(" in expected else lines[1].strip() == expected, lines
    assert tree(paths) == before  # nothing created, nothing removed


def test_validate_overwrite_accepts_another_run_and_problems_name_spec_lines(paths, monkeypatch, capsys):
    monkeypatch.chdir(paths)
    (paths / "spec.yaml").write_text("input:\n  path: none\nfeatures:\n  - name: vgg16\n"
                                     "    params: {weights: missing.h5, pooling: avg}\noutput:\n  path: foreign\n")
    code, _, err = run(["validate", "spec.yaml"], capsys)
    assert code == 2
    assert err.splitlines() == [
        "spec.yaml: 3 problems",
        "  spec.yaml:2: input.path: input 'none' does not exist",
        f"  spec.yaml:5: features[0].params.weights: file '{paths}/missing.h5' does not exist or is not a file "
        "(weights: imagenet, or the path of a weights file that every worker can read)",
        "  spec.yaml:7: output.path: output folder 'foreign' is not empty and holds no featurelib run (found "
        "['notes.txt']); choose an empty or new folder",
    ]
    write_spec(paths / "ok.yaml", output={"path": "other"})
    code, out, _ = run(["validate", "ok.yaml", "--input", str(paths / "foreign"), "--overwrite"], capsys)
    assert (code, out.splitlines()[0]) == (0, "ok.yaml: OK (3 features, dim 89 at image size 32x32)")


def test_validate_checks_a_saved_vocabulary(digits_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(f"input: {{path: {digits_dir}}}\nfeatures:\n  - name: keypoints_bovw\n"
                                        "    column: words\n    params: {vocabulary: gone.npz}\n")
    code, _, err = run(["validate", "spec.yaml"], capsys)
    assert code == 2
    assert err.splitlines()[1] == ("  spec.yaml:3: features[0]: feature 'words': saved artefact 'gone.npz' does not "
                                   "exist or is not a file")


# --- plan --------------------------------------------------------------------------------------------


@pytest.fixture
def manifest_input(tmp_path, digits_dir):
    """A CSV manifest of 11 rows whose counts are known: 3 list-stage rejects, 1 unlabelled, 1 missing file."""
    root = tmp_path / "in"
    root.mkdir()
    for i, path in enumerate(sorted(digits_dir.rglob("*.png"))[:10]):
        shutil.copyfile(path, root / f"img{i}.png")
    rows = [("img0.png", "zero", "train", ""), ("img1.png", "zero", "train", ""), ("img2.png", "zero", "val", ""),
            ("img3.png", "one", "train", ""), ("img4.png", "one", "test", ""), ("img5.png", "one", "train", ""),
            ("img6.png", "", "train", ""),          # unlabelled
            ("img7.png", "two", "train", ""),       # invalid_label: not in the spec's labels
            ("img8.png", "zero", "holdout", ""),    # invalid_input: unknown split
            ("img9.png", "one", "val", "img1.png"),  # invalid_input: repeats an id
            ("missing.png", "zero", "test", "")]    # listed, not found when read
    (root / "manifest.csv").write_text("uri,label,split,id\n" + "".join(f"{','.join(r)}\n" for r in rows))
    return root


def test_plan_prints_inputs_classes_splits_rejects_shards_columns_and_size(manifest_input, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", labels=["zero", "one"], output={"shards": 1, "formats": ["parquet"]})
    manifest, out = manifest_input / "manifest.csv", tmp_path / "out"
    before = tree(tmp_path)
    code, text, err = run(["plan", "--spec", str(spec), "--input", str(manifest), "--output", str(out),
                           "--sample", "4", "--workers", "2"], capsys)
    assert code == 0, err
    size = sum(os.path.getsize(manifest_input / f"img{i}.png") for i in range(7))
    lines = text.splitlines()
    assert lines[:19] == [
        f"input            {manifest}",
        f"output           {out}",
        f"inputs           11 ({human_bytes(size)}, 1 not found)",
        "classes          2",
        "  zero           4",
        "  one            3",
        "  (unlabelled)   1",
        "splits           train 5, val 1, test 2",
        "list rejects     3",
        "  invalid_input  2",
        "  invalid_label  1",
        "shards           1 (rows per shard: min 8, median 8, max 8)",
        "rows             8",
        "columns          3 (dim 89)",
        "  color_stats     color_stats     9",
        "  color_hist      color_hist      64",
        "  intensity_hist  intensity_hist  16",
        f"output size      parquet ~{human_bytes(8 * 89 * 4)} (rows x (dim x 4 bytes + pixels), before compression)",
        lines[18],
    ]
    assert re.fullmatch(r"estimate         ~[0-9.]+ (s|min|h) on the local engine with 2 workers \(1 shard at a time\)",
                        lines[18]), lines[18]
    assert re.fullmatch(r"  measured on 4 sampled inputs in this process(, 1 of them rejected)?: [0-9.]+ ms per input; "
                        r"per worker, [0-9.]+ s to start and [0-9.]+ s to load the extractors", lines[19]), lines[19]
    assert re.fullmatch(r"  per stage \(ms per input\): read [0-9.]+, decode [0-9.]+, preprocess [0-9.]+, augment "
                        r"[0-9.]+, extract [0-9.]+", lines[20]), lines[20]
    assert lines[21:] == ["  note: not counting writing the shards and committing"]
    assert tree(tmp_path) == before  # nothing written: no output, no artefact


def test_plan_json_rows_per_shard_with_variants_and_no_estimate(digits_dir, tmp_path, capsys):
    from featurelib.sources import shard_of, split_of

    root = tmp_path / "in"
    from conftest import copy_digits

    copy_digits(digits_dir, root, step=30, limit=60)
    spec = write_spec(tmp_path / "spec.yaml", output={"shards": 3, "pixels": True},
                      augment={"copies": 2, "splits": ["train"], "ops": [{"op": "flip", "horizontal": True}]})
    code, text, _ = run(["plan", "--spec", str(spec), "--input", str(root), "--output", str(tmp_path / "o"),
                         "--sample", "0", "--json"], capsys)
    assert code == 0
    report = json.loads(text)
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    splits = {k: split_of(42, k, {"train": 0.8, "val": 0.1, "test": 0.1}) for k in keys}
    rows = [sum(1 + 2 * (splits[k] == "train") for k in keys if shard_of(k, 3) == s) for s in range(3)]
    assert report["inputs"] == 60 and report["rows"] == sum(rows) and report["shards"] == 3
    assert report["rows_per_shard"] == {"min": min(rows), "median": sorted(rows)[1], "max": max(rows)}
    assert report["splits"] == {s: list(splits.values()).count(s) for s in ("train", "val", "test")}
    assert report["classes"] == {c: sum(k.startswith(f"{c}/") for k in keys) for c in sorted({k[0] for k in keys})}
    assert report["columns"] == [{"column": "color_stats", "extractor": "color_stats", "dim": 9},
                                 {"column": "color_hist", "extractor": "color_hist", "dim": 64},
                                 {"column": "intensity_hist", "extractor": "intensity_hist", "dim": 16}]
    pixels = 32 * 32 * 3
    assert report["output_bytes"] == {"parquet": sum(rows) * (89 * 4 + pixels), "hdf5": sum(rows) * (89 * 4 + pixels)}
    assert report["estimate"] is None and report["list_rejects"] == {} and report["bytes"] == sum(
        os.path.getsize(root / k) for k in keys)
    assert not (tmp_path / "o").exists()
    code, text, _ = run(["plan", "--spec", str(spec), "--input", str(root), "--output", str(tmp_path / "o"),
                         "--sample", "0"], capsys)
    assert text.splitlines()[-1] == "estimate         none (--sample 0, or nothing to read)"


def test_plan_times_a_fitted_extractor_without_writing_its_artefact(digits_dir, tmp_path, capsys):
    from conftest import copy_digits

    root = copy_digits(digits_dir, tmp_path / "in", step=40, limit=40)
    spec = write_spec(tmp_path / "spec.yaml", image={"size": [64, 64]}, dedup="content", features=[
        {"name": "keypoints_bovw", "params": {"vocabulary_size": 4, "sample_images": 8}}])
    code, text, err = run(["plan", "--spec", str(spec), "--input", str(root), "--output", str(tmp_path / "o"),
                           "--sample", "6", "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)
    estimate = report["estimate"]
    assert estimate["sampled"] == 6 and estimate["seconds"] > 0 and estimate["per_stage_s"]["extract"] >= 0
    assert estimate["notes"][-2:] == ["not counting the pre-pass that reads and hashes every input (dedup: content)",
                                      "not counting the pre-pass that samples the train split and fits "
                                      "keypoints_bovw"]
    assert report["notes"] == ["dedup: content: exact duplicates are found when the inputs are read; counts above "
                               "include them"]
    assert not (tmp_path / "o").exists()


def test_plan_without_an_output_plans_anyway(digits_dir, tmp_path, monkeypatch, capsys):
    from conftest import copy_digits

    monkeypatch.chdir(tmp_path)
    root = copy_digits(digits_dir, tmp_path / "in", step=100, limit=10)
    spec = write_spec(tmp_path / "spec.yaml", input={"path": "in"})
    code, text, _ = run(["plan", "--spec", "spec.yaml", "--sample", "0"], capsys)
    assert code == 0
    size = human_bytes(sum(p.stat().st_size for p in root.rglob("*.png")))
    assert text.splitlines()[:3] == [f"input            {root}",
                                     "output           not set (--output or output.path, to run)",
                                     f"inputs           10 ({size})"]
    assert tree(tmp_path) == sorted(["spec.yaml", *(os.path.join("in", k) for k in tree(root))])


def test_plan_fetches_no_weights_and_times_the_other_columns(digits_dir, tmp_path, monkeypatch, capsys):
    from conftest import copy_digits
    from featurelib.deep import weights
    from featurelib.deep.backbones import VGG16

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # Keras' cache is this test's empty folder only (not /tmp/.keras, which a machine may hold).
    monkeypatch.setattr(weights, "keras_cache_dirs", lambda: [str(tmp_path / "keras" / "models")])
    root = copy_digits(digits_dir, tmp_path / "in", step=100, limit=10)
    spec = write_spec(tmp_path / "spec.yaml", features=[{"name": "color_stats"},
                                                        {"name": "vgg16", "params": {"pooling": "avg"}}])
    code, text, err = run(["plan", "--spec", str(spec), "--input", str(root), "--sample", "2", "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)
    assert report["dim"] == 9 + 512 and report["estimate"]["sampled"] == 2
    note = report["estimate"]["notes"][0]
    assert note.startswith("vgg16 not timed (cannot load here: SpecError: weights: imagenet: "
                           "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 is not in Keras' cache"), note
    assert "(a run fetches it first; plan does not)" in note
    assert not (tmp_path / "keras").exists() and weights.cached_file(VGG16.imagenet) is None


@pytest.mark.parametrize("flags,message", [
    (["--input", "{tmp}/none"], "featurize: error: input '{tmp}/none' is not a folder (or a .csv/.parquet manifest)"),
    (["--sample", "-1"], "featurize: error: --sample must be >= 0, got -1"),
    (["--workers", "0"], "featurize: error: --workers must be >= 1, got 0"),
])
def test_plan_user_mistakes_exit_2_with_one_line(flags, message, digits_dir, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", input={"path": str(digits_dir)}, output={"path": str(tmp_path / "o")})
    code, out, err = run(["plan", "--spec", str(spec), *[f.format(tmp=tmp_path) for f in flags]], capsys)
    assert (code, out, err) == (2, "", message.format(tmp=tmp_path) + "\n")


# --- extractors --------------------------------------------------------------------------------------


def test_extractors_lists_every_registered_one(capsys):
    code, out, _ = run(["extractors"], capsys)
    assert code == 0
    lines = out.splitlines()
    width = max(16, *(len(n) + 2 for n in registry.names()))
    assert lines[0] == f"{'name':<{width}}view  version  dim at 224x224  description"
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert sorted(rows) == registry.names()
    assert rows["hog"] == (f"{'hog':<{width}}gray  1        54756           Histogram of oriented gradients (Dalal "
                           "and Triggs 2005), equal to ski...")
    assert rows["color_stats"] == (f"{'color_stats':<{width}}rgb   1        9               Mean, standard "
                                   "deviation and skewness of each channel")
    assert rows["vgg16"] == (f"{'vgg16':<{width}}rgb   1        25088           VGG16 (Simonyan and Zisserman "
                             "2015) [deep]")
    assert rows["cnn"].split()[3] == "-"  # no default model: no length
    assert lines[-1] == f"{len(registry.names())} extractors; `featurize extractors NAME` shows one's parameters"
    code, out, _ = run(["extractors", "--json"], capsys)
    entries = {e["name"]: e for e in json.loads(out)}
    assert entries["lbp"] == {"name": "lbp", "view": "gray", "version": 1, "tags": [],
                              "summary": "Histogram of local binary patterns (Ojala, Pietikainen, Maenpaa 2002)",
                              "dim": 10}


def test_extractors_name_shows_parameters_meaning_and_dims(capsys):
    code, out, _ = run(["extractors", "hog"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "hog (version 1, view gray)"
    table = lines.index("parameter        default  meaning")
    assert lines[table + 1:table + 6] == [
        "orientations     9        [1, 180]",
        "pixels_per_cell  [8, 8]   [rows, cols]; pixels beyond the last whole cell are ignored",
        "cells_per_block  [3, 3]   [rows, cols]",
        "block_norm       L2-Hys   L1, L1-sqrt, L2, L2-Hys (L2, clip at 0.2, L2 again), with eps = 1e-5",
        "transform_sqrt   false    square root of the intensities first",
    ]
    # (cells - block + 1)^2 x block^2 x orientations: 224 // 8 = 28 cells, 64 // 8 = 8
    assert lines[-4:] == [
        "output dimension D = (cells_r - blocks_r + 1) x (cells_c - blocks_c + 1) x blocks_r x blocks_c x "
        "orientations, cells = size // pixels_per_cell",
        f"  at 224x224 with the defaults: {26 * 26 * 9 * 9}",
        f"  at 64x64 with the defaults: {6 * 6 * 9 * 9}",
        "reference        docs/EXTRACTORS.md, section hog",
    ]
    code, out, _ = run(["extractors", "cnn", "--json"], capsys)
    entry = json.loads(out)
    assert [p["name"] for p in entry["params"]] == ["model", "layer", "pooling", "weights"]
    assert entry["params"][0] == {"name": "model", "default": None, "meaning": "one of resnet50, inception_v3, "
                                  "xception, mobilenet_v2, efficientnet_b0"}
    assert entry["dims"]["224x224"].startswith("needs parameters: model must be one of ['resnet50'")
    code, out, _ = run(["extractors", "keypoints_bovw"], capsys)
    assert ("fits             its vocab (OUT/artifacts/<column>.vocab.npz) on a sample of the train split before "
            "the main pass") in out.splitlines()


def test_extractors_unknown_name_exit_2_with_the_known_ones(capsys):
    code, out, err = run(["extractors", "hogg"], capsys)
    assert (code, out, err) == (2, "", f"featurize: error: unknown extractor 'hogg'; known: {KNOWN}; "
                                       "did you mean 'hog'?\n")
    code, _, err = run(["extractors", "xyzzy"], capsys)
    assert (code, err) == (2, f"featurize: error: unknown extractor 'xyzzy'; known: {KNOWN}\n")
    for name, hint in (("HOG", "did you mean 'hog'?"),
                       ("sift", "did you mean 'keypoints_bovw' (its parameter descriptor takes sift)?"),
                       ("resnet50", "did you mean 'cnn' (its parameter model takes resnet50)?")):
        code, _, err = run(["extractors", name], capsys)
        assert (code, err) == (2, f"featurize: error: unknown extractor {name!r}; known: {KNOWN}; {hint}\n")


def test_extractors_without_the_docs_fall_back_to_docstrings(monkeypatch):
    monkeypatch.setattr(catalog, "doc_sections", lambda: {})
    entry = catalog.describe("intensity_hist")  # its function's numpydoc: prose and the Parameters section
    assert entry["description"] == "Histogram of grayscale intensities, L1-normalised."
    assert entry["params"] == [{"name": "bins", "default": 256, "meaning": "Number of uniform bins over [0, 256); "
                                "value v goes to floor(v * bins / 256)."}] and entry["formula"] is None
    assert entry["dims"] == {"224x224": 256, "64x64": 256} and not entry["documented"]


def test_parse_doc_reads_sections_tables_and_formulas():
    text = ("# Title\n\n## Family\n\n### `alpha` (view `gray`, D = `bins` x 2)\n\nFirst sentence. Second one.\n\n"
            "| parameter | default | values |\n|---|---|---|\n| `bins` | `8` | integer in [1, 256] |\n"
            "| `low`, `high` | `0`, `1` | the `range` |\n\n### `beta` (view `rgb`)\n\nBeta.\n\n"
            "D = rows x cols. More text.\n\n## Planned\n\nNothing.\n")
    sections = catalog.parse_doc(text)
    assert sections == {
        "alpha": catalog.DocSection("First sentence. Second one.", "D = bins x 2",
                                    {"bins": "integer in [1, 256]", "low": "the range", "high": "the range"}),
        "beta": catalog.DocSection("Beta.", "D = rows x cols", {}),
    }
    assert catalog.one_line("First sentence. Second one.") == "First sentence"
    # every built-in extractor is described, with every parameter it accepts
    for name in ("color_stats", "color_hist", "intensity_hist", "hu_moments", "zernike", "haralick", "lbp", "hog",
                 "keypoints_bovw", "vgg16", "cnn"):
        section = catalog.doc_sections()[name]
        assert set(registry.get(name).defaults) <= set(section.params), name
        assert section.description, name


def test_cli_help_lists_the_new_commands(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("validate", "plan", "extractors"):
        assert re.search(rf"^\s+{command}\s+\S", out, flags=re.M), command
