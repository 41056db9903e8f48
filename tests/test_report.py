"""``featurize report``: a self-contained HTML page of a real output, opened in headless Chromium.

The outputs are small real runs (digits of scikit-learn) with hostile names: a class folder and a
file whose key reads ``<script>document.title='pwned'</script>.png``, a class ``$\\alpha$ <b>x``
(HTML and matplotlib mathtext), an unreadable file named like an ``<img onerror=...>`` tag and an
empty one (rejects), and an unlabelled file. The page must load in Chromium without a console
error, every image must decode, and every hostile string must show as text with no script run
(the page's own CSP is removed in the copy the browser checks, so escaping alone is tested).
Chromium is Debian's package (``make chromium``, a prerequisite of ``make test``).
"""

from __future__ import annotations

import base64
import html
import html.parser
import io
import json
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from conftest import copy_digits, write_spec
from featurelib.cli import main

HOSTILE_DIR = "<script>document.title='pwned'<"
HOSTILE_KEY = HOSTILE_DIR + "/script>.png"  # <script>document.title='pwned'</script>.png: unreadable, a reject
DOLLAR_DIR = "$\\alpha$ <b>x"
BAD_NAME = "<img src=x onerror=\"document.title='pwned2'\">.png"
EMPTY_NAME = "empty & \"quoted\".png"
GRID_ALT = "sample sources and their augmented variants"

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || (e.target && String(e.target.src).slice(0, 60)))), true);
for (const k of ['error', 'warn']) { const f = console[k]; console[k] = (...a) => { window.__errors.push(k + ': ' + a.join(' ')); f.apply(console, a); }; }
window.addEventListener('load', () => {
  const p = document.createElement('pre'); p.id = 'featurelib-probe';
  p.textContent = JSON.stringify({title: document.title, errors: window.__errors,
    images: [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
    scripts: document.scripts.length, handlers: document.querySelectorAll('[onerror],[onload]').length,
    text: document.body.innerText});
  document.body.appendChild(p);
});
</script>"""


def _corpus(root: pathlib.Path, digits_dir: pathlib.Path) -> pathlib.Path:
    copy_digits(digits_dir, root, step=30, limit=60)
    digit = sorted(digits_dir.rglob("*.png"))[1]
    for rel in (HOSTILE_DIR + "/script>ok.png", f"{DOLLAR_DIR}/one.png", "root-unlabelled.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(digit, root / rel)
    (root / HOSTILE_KEY).write_bytes(b"<script>document.title='pwned3'</script>")
    (root / "0" / BAD_NAME).write_bytes(b"not an image at all")
    (root / "0" / EMPTY_NAME).write_bytes(b"")
    return root


def _run(tmp: pathlib.Path, data: pathlib.Path, out: pathlib.Path, *, pixels: bool, extra=()) -> None:
    spec = write_spec(tmp / f"spec-{out.name}.yaml", seed=3,
                      augment={"copies": 2, "ops": [{"op": "rotate", "degrees": 20}, {"op": "flip", "p": 0.5}]},
                      output={"shards": 2, "pixels": pixels}, failures={"max_reject_fraction": 0.2})
    code = main(["run", "--spec", str(spec), "--input", str(data), "--output", str(out), "--workers", "2", *extra])
    assert code == 0, code


@pytest.fixture(scope="module")
def stored(tmp_path_factory, digits_dir):
    """A run that stored its pixels, and its report (written by the command line)."""
    tmp = tmp_path_factory.mktemp("report")
    data = _corpus(tmp / "data", digits_dir)
    out = tmp / "out"
    _run(tmp, data, out, pixels=True)
    assert main(["report", str(out)]) == 0
    return tmp, data, out


def _page(path: pathlib.Path) -> str:
    return path.read_text(encoding="utf-8")


def _grid(page: str) -> np.ndarray:
    from PIL import Image

    match = re.search(r'<img class="plot" alt="' + GRID_ALT + r'" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "no sample grid in the report"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("RGB"))


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _chromium(url: str, profile: pathlib.Path) -> tuple[str, str]:
    """``(DOM after load, stderr)`` of headless Chromium; console messages are logged to stderr."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: run `make chromium` (Debian's package; `make test` does it)"
    proc = subprocess.run(
        [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-extensions", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_is_self_contained_and_escapes_everything(stored):
    _, _, out = stored
    path = out / "report.html"
    page = _page(path)
    assert [n for n in os.listdir(out) if ".tmp-" in n] == []
    parser = _Tags()
    parser.feed(page)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    # classes, rejects, sample grid, input sizes, 3 feature columns, time per stage
    assert len(images) >= 8
    assert all(attrs["src"].startswith("data:image/png;base64,") for attrs in images)
    for tag, attrs in parser.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed", "base"), tag
        assert not any(name.startswith("on") for name in attrs), (tag, attrs)
        assert attrs.get("href", "#").startswith("#"), attrs
    assert "http://" not in page and "https://" not in page
    assert 'http-equiv="Content-Security-Policy"' in page and "default-src 'none'" in page
    for text in (HOSTILE_KEY, DOLLAR_DIR, "0/" + BAD_NAME, "0/" + EMPTY_NAME):
        assert html.escape(text) in page, text
    assert "The stored pixels" in page  # the grid's tiles come from the output, not from the inputs


def test_report_in_headless_chromium(stored, tmp_path):
    """The page as written loads without a console message (no CSP violation either); a copy without
    its CSP, with a probe script, shows that every image decodes and no hostile string ran."""
    _, _, out = stored
    page = _page(out / "report.html")
    dom, stderr = _chromium((out / "report.html").as_uri(), tmp_path / "profile-1")
    assert _console(stderr) == []
    assert "featurelib report" in dom

    meta = re.search(r'<meta http-equiv="Content-Security-Policy"[^>]*>', page).group(0)
    probe = page.replace(meta, "").replace("<head>", "<head>" + PROBE, 1)
    copy = tmp_path / "probe.html"
    copy.write_text(probe, encoding="utf-8")
    dom, stderr = _chromium(copy.as_uri(), tmp_path / "profile-2")
    found = re.search(r'<pre id="featurelib-probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["errors"] == [], result["errors"]
    assert _console(stderr) == []
    assert result["title"] == "featurelib report: out"
    assert result["scripts"] == 1 and result["handlers"] == 0  # the probe only: nothing from the data became markup
    assert len(result["images"]) >= 8
    for alt, complete, width, height in result["images"]:
        assert complete and width > 0 and height > 0, alt
    text = result["text"]
    for shown in (HOSTILE_KEY, HOSTILE_DIR, DOLLAR_DIR, "0/" + BAD_NAME, "0/" + EMPTY_NAME):
        assert shown in text, shown
    assert "Unlabelled sources written: 1" in text
    assert "unreadable\t2" in text and "empty\t1" in text


def test_report_without_pixels_redecodes_then_generations_then_skips(stored, tmp_path, digits_dir):
    """Without stored pixels, the grid is re-decoded from the recorded uris: the same tiles as the
    stored pixels of the same run; an incremental generation shows; gone inputs skip the grid."""
    _, _, with_pixels = stored
    data = _corpus(tmp_path / "data", digits_dir)
    out = tmp_path / "out"
    _run(tmp_path, data, out, pixels=False)
    report = tmp_path / "elsewhere.html"
    assert main(["report", str(out), "--out", str(report)]) == 0
    page = _page(report)
    assert "This run did not store pixels" in page
    assert np.array_equal(_grid(page), _grid(_page(with_pixels / "report.html")))
    assert "One generation" in page

    extra = sorted(digits_dir.rglob("*.png"))[7::300]
    for path in extra:
        shutil.copyfile(path, data / path.parent.name / f"new-{path.name}")
    _run(tmp_path, data, out, pixels=False, extra=["--incremental"])
    shutil.rmtree(data)
    assert main(["report", str(out), "--samples", "3"]) == 0
    page = _page(out / "report.html")
    generations = re.search(r'<section id="generations">(.*?)</section>', page, re.S).group(1)
    assert generations.count("<tr>") == 3  # header + two generations
    assert f"<td class=\"n\">{len(extra)}</td>" in generations
    assert "No sample images: the sources&#x27; original files cannot be read any more" in page
    assert GRID_ALT not in page


def test_report_of_a_failed_last_run_and_of_non_outputs(stored, tmp_path, capsys):
    tmp, _, out = stored
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a committed featurelib output" in err[0], err

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "_FAILED.json").write_text(json.dumps({"kind": "error", "error": "boom"}))
    assert main(["report", str(failed)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its last run failed (boom)" in err[0] and "_FAILED.json" in err[0], err

    assert main(["report", str(out), "--out", str(tmp_path / "no" / "such" / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err

    # --spec: the run's own spec (its input given by --input then) is taken; another spec is refused.
    assert main(["report", str(out), "--spec", str(tmp / "spec-out.yaml"), "--out", str(tmp_path / "r.html"),
                 "--samples", "1"]) == 0
    other = write_spec(tmp_path / "other.yaml", features=[{"name": "color_stats"}])
    assert main(["report", str(out), "--spec", str(other), "--out", str(tmp_path / "r.html")]) == 2
    assert "is not the spec of this output" in capsys.readouterr().err

    # A failed incremental run leaves a valid manifest next to _FAILED.json: reported, with a warning.
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "_FAILED.json").write_text(json.dumps({"kind": "error", "error": "<b>disk</b> full", "generation": 2,
                                                   "incremental": True}))
    assert main(["report", str(copy), "--samples", "0"]) == 0
    page = _page(copy / "report.html")
    assert "The last run (generation 2 error) failed" in page and "&lt;b&gt;disk&lt;/b&gt; full" in page
