"""``featurize preview``: one PNG showing sources next to their augmented variants.

The tiles come from the run's own code path (:func:`featurelib.shard.read_and_decode`,
:func:`featurelib.compute.preprocess`, :func:`featurelib.compute.make_variants`), so a
tile is exactly what a run with ``output.pixels: true`` stores for that key; tiles of
small images are enlarged by an integer factor (nearest neighbour: every stored pixel
becomes a ``k x k`` block). The PNG carries its layout as JSON in the text chunk
``featurelib.preview``: one entry per tile with its key and position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from featurelib.compute import Variant, make_variants, preprocess
from featurelib.errors import UserError
from featurelib.sources import SourceRecord, list_inputs
from featurelib.spec import RunSpec

#: Tiles are enlarged until their longer side is at least this many pixels (captions need room).
MIN_TILE_SIDE = 96
MARGIN = 6
CAPTION_HEIGHT = 28
_FONT, _FONT_SCALE = cv2.FONT_HERSHEY_PLAIN, 0.9
_BACKGROUND, _CAPTION_BG, _INK = (236, 236, 236), (255, 255, 255), (20, 20, 20)
#: Sources read at most, per source wanted, while looking for ones in ``augment.splits``.
_SCAN_FACTOR = 10
PNG_TEXT_KEY = "featurelib.preview"


@dataclasses.dataclass(frozen=True)
class PreviewRow:
    """One source of the grid and its variants (the original first)."""

    record: SourceRecord
    split: str
    variants: list[Variant]


def preview_order(seed: int, records: Sequence[SourceRecord]) -> list[SourceRecord]:
    """`records` in a seeded order (a stable hash of seed and key): the same pick on every machine."""
    def rank(record: SourceRecord) -> str:
        return hashlib.sha256(f"{seed}:preview:{record.source_key}".encode()).hexdigest()
    return sorted(records, key=rank)


def collect_rows(spec: RunSpec, records: Sequence[SourceRecord], n: int, decoder) -> tuple[list[PreviewRow], Counter]:
    """Up to `n` decodable sources in seeded order, preferring those that get variants.

    Returns
    -------
    rows : list of PreviewRow
    rejected : Counter of reject reasons met on the way (those sources are left out of the grid)
    """
    from featurelib.shard import read_and_decode

    augmented, plain, rejected = [], [], Counter()
    wants_variants = spec.augment.copies > 0
    for count, record in enumerate(preview_order(spec.seed, records)):
        if len(augmented) >= n or (count >= _SCAN_FACTOR * n and len(augmented) + len(plain) >= n):
            break
        outcome = read_and_decode(record, spec, decoder, Counter())
        if not isinstance(outcome, tuple):  # a RejectRow
            rejected[outcome.reason] += 1
            continue
        _, decoded, split = outcome
        image = preprocess(spec, decoded.pixels)
        row = PreviewRow(record, split, make_variants(spec, image, record.source_key, split))
        (augmented if not wants_variants or split in spec.augment.splits else plain).append(row)
    return (augmented + plain)[:n], rejected


def _fit_text(text: str, width: int) -> str:
    """`text`, cut from the left (keys differ at their end) until it fits `width` pixels."""
    def measure(s: str) -> int:
        return cv2.getTextSize(s, _FONT, _FONT_SCALE, 1)[0][0]
    if measure(text) <= width:
        return text
    while len(text) > 1 and measure(".." + text) > width:
        text = text[1:]
    return ".." + text


def tile_scale(size: Sequence[int]) -> int:
    """Integer enlargement of a tile of ``size = (H, W)``."""
    return max(1, -(-MIN_TILE_SIDE // max(size)))


def render_grid(rows: Sequence[PreviewRow], size: Sequence[int], copies: int) -> tuple[np.ndarray, list[dict]]:
    """Lay out the rows: one source per row, its original then its variants, each tile captioned.

    Returns
    -------
    grid : (Hg, Wg, 3) uint8 RGB
    layout : one dict per tile: ``key, source_key, aug_index, label, split, top, left, height, width, scale``
        (``top``/``left``/``height``/``width`` locate the image pixels, without the caption).
    """
    h, w = int(size[0]), int(size[1])
    k = tile_scale(size)
    th, tw = h * k, w * k
    cell_h, cell_w = CAPTION_HEIGHT + th + MARGIN, tw + MARGIN
    columns = 1 + copies
    grid = np.empty((MARGIN + cell_h * max(1, len(rows)), MARGIN + cell_w * columns, 3), np.uint8)
    grid[:] = _BACKGROUND
    layout = []
    for r, row in enumerate(rows):
        for variant in row.variants:
            top, left = MARGIN + r * cell_h, MARGIN + variant.aug_index * cell_w
            grid[top : top + CAPTION_HEIGHT, left : left + tw] = _CAPTION_BG
            label = row.record.label_name if row.record.label_name is not None else "unlabelled"
            second = f"{label} ({row.split})" if variant.aug_index == 0 else f"variant {variant.aug_index}"
            for line, text in enumerate((variant.key, second)):
                cv2.putText(grid, _fit_text(text, tw - 4), (left + 2, top + 11 + 13 * line), _FONT, _FONT_SCALE,
                            _INK, 1, cv2.LINE_AA)
            image_top = top + CAPTION_HEIGHT
            grid[image_top : image_top + th, left : left + tw] = np.repeat(np.repeat(variant.image, k, 0), k, 1)
            layout.append({"key": variant.key, "source_key": row.record.source_key, "aug_index": variant.aug_index,
                           "label": row.record.label_name, "split": row.split, "top": image_top, "left": left,
                           "height": th, "width": tw, "scale": k})
    return grid, layout


def write_png(path: str, grid: np.ndarray, layout: list[dict]) -> None:
    """Write the grid with its layout in a PNG text chunk (temp file, then rename)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_TEXT_KEY, json.dumps({"tiles": layout}))
    tmp = f"{path}.tmp-{os.getpid()}.png"
    try:
        Image.fromarray(grid).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise UserError(f"cannot write the preview to {path}: {exc.strerror or exc}") from None


def read_layout(path: str) -> list[dict]:
    """The tile layout stored in a preview PNG."""
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text[PNG_TEXT_KEY])["tiles"]


def preview(spec: RunSpec, n: int, out_path: str, log: Callable[[str], None] = print) -> list[dict]:
    """List the spec's input, pick `n` sources, write the grid PNG to `out_path`; returns the layout.

    Raises
    ------
    UserError
        Unusable input, no decodable source among those read, or an unwritable `out_path`.
    """
    from featurelib.shard import close_decoder, make_decoder

    if n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    if not spec.input.path:
        raise UserError("no input: set input.path in the spec or pass --input")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise UserError(f"cannot write the preview to {out_path}: folder {folder} does not exist")
    listing = list_inputs(spec.input.path, storage_options=spec.input.storage_options, labels=spec.labels,
                          seed=spec.seed, fractions=spec.split.fractions(), by_content=spec.split.by == "content")
    decoder = make_decoder(spec)
    try:
        rows, rejected = collect_rows(spec, listing.records, n, decoder)
    finally:
        close_decoder(decoder)
    if not rows:
        reasons = ", ".join(f"{reason} x{count}" for reason, count in rejected.most_common())
        raise UserError(f"no image under {spec.input.path} could be decoded ({reasons or 'nothing listed'})")
    grid, layout = render_grid(rows, spec.image.size, spec.augment.copies)
    write_png(out_path, grid, layout)
    skipped = f"; {sum(rejected.values())} rejected source(s) left out" if rejected else ""
    with_variants = sum(len(row.variants) > 1 for row in rows)
    log(f"wrote {out_path}: {len(rows)} source(s), {with_variants} with {spec.augment.copies} variant(s) each, "
        f"tiles {spec.image.size[0]}x{spec.image.size[1]} shown x{tile_scale(spec.image.size)}{skipped}")
    return layout
