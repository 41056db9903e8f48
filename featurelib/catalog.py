"""``featurize extractors``: every registered extractor, and one in detail.

Names, views, versions, defaults and output lengths come from the registry
(:mod:`featurelib.registry`: built-in families and plugins alike). What each
extractor and parameter means comes from docs/EXTRACTORS.md, the reference
the registry's declarations follow: its ``### `name` (view ..., D = ...)``
sections and their ``| parameter | default | values |`` tables. An extractor
the document does not describe (a plugin, or an install without the docs)
shows its function's or handler's docstring instead.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import os
import re
import textwrap
from collections.abc import Mapping
from typing import Any

from featurelib import registry
from featurelib.errors import SpecError, UserError

#: The document the descriptions come from (absent in an install without the docs).
DOC_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "EXTRACTORS.md")
#: Image sizes the output length is shown at: the spec's default, and a small one.
SIZES = ((224, 224), (64, 64))


@dataclasses.dataclass(frozen=True)
class DocSection:
    """What docs/EXTRACTORS.md says about one extractor."""

    description: str
    formula: str | None
    params: Mapping[str, str]


def _plain(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("`", "").replace("**", "")).strip()


def parse_doc(text: str) -> dict[str, DocSection]:
    """``{name: DocSection}`` of every ``### `name` (...)`` section of an EXTRACTORS.md text."""
    sections: dict[str, DocSection] = {}
    parts = re.split(r"^(###? .*)$", text, flags=re.M)
    for heading, body in zip(parts[1::2], parts[2::2]):
        found = re.match(r"^### `(\w+)`(?: \((.*)\))?\s*$", heading)
        if not found:
            continue
        paragraphs = [p for p in re.split(r"\n\s*\n", body.strip()) if p.strip()]
        prose = [p for p in paragraphs if not p.lstrip().startswith("|")]
        formula = None
        meta = found.group(2) or ""
        if "D = " in meta:
            formula = "D = " + _plain(meta.split("D = ", 1)[1])
        else:
            lead = next((p for p in prose if p.startswith("D = ")), None)
            if lead:
                formula = _plain(lead).split(". ")[0].rstrip(".")
        params: dict[str, str] = {}
        choices: dict[str, list[str]] = {}
        for paragraph in paragraphs:
            rows = paragraph.strip().splitlines()
            keyed = re.match(r"^\|\s*`(\w+)`\s*\|", rows[0]) if rows else None
            if keyed:  # a table of a parameter's values (cnn's models): its first column lists them
                choices[keyed.group(1)] = [m.group(1) for row in rows[2:] if (m := re.match(r"^\|\s*`(\w+)`", row))]
            if not rows or not re.match(r"^\|\s*parameter\s*\|\s*default\s*\|\s*values\s*\|", rows[0]):
                continue
            for row in rows[2:]:
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                if len(cells) < 3:
                    continue
                meaning = _plain(" | ".join(cells[2:]))
                for name in re.findall(r"`(\w+)`", cells[0]):
                    params[name] = meaning
        for name, values in choices.items():
            if name in params:
                params[name] = params[name].replace("one of the table", "one of " + ", ".join(values))
        sections[found.group(1)] = DocSection(_plain(prose[0]) if prose else "", formula, params)
    return sections


@functools.lru_cache(maxsize=1)
def doc_sections() -> dict[str, DocSection]:
    """The sections of docs/EXTRACTORS.md (empty when the file is not installed)."""
    try:
        with open(DOC_PATH, encoding="utf-8") as handle:
            return parse_doc(handle.read())
    except OSError:
        return {}


def docstring(definition: registry.ExtractorDef) -> str:
    """The docstring of the function a per-image extractor wraps, or of its handler class."""
    handler = definition.handler
    target = handler.args[0] if isinstance(handler, functools.partial) and handler.args else handler
    doc = inspect.getdoc(target) or ""
    if inspect.isclass(target) and doc == inspect.getdoc(registry.Handler):
        return ""
    return doc


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The prose of a numpydoc docstring (before its first section) and ``{parameter: meaning}`` of its
    ``Parameters`` section."""
    sections = re.split(r"^(\w[\w ]*)\n-{3,}\s*$", doc, flags=re.M)
    params: dict[str, str] = {}
    for title, body in zip(sections[1::2], sections[2::2]):
        if title.strip() != "Parameters":
            continue
        for found in re.finditer(r"^(\w+)\s*:[^\n]*\n((?:[ \t]+\S[^\n]*\n?)*)", body, flags=re.M):
            params[found.group(1)] = _plain(found.group(2))
    return _plain(sections[0]), params


def one_line(text: str, width: int = 72) -> str:
    """The first sentence of `text`, cut to `width` characters."""
    first = re.split(r"(?<=[.:;])\s", _plain(text), maxsplit=1)[0].rstrip(".:;")
    return first if len(first) <= width else first[: width - 3].rstrip() + "..."


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def dims(definition: registry.ExtractorDef) -> dict[str, int | str]:
    """``{"HxW": D}`` at :data:`SIZES` with the default parameters, or why there is none."""
    problems: list[str] = []
    params = definition.normalize_params({}, report=problems.append)
    out: dict[str, int | str] = {}
    for size in SIZES:
        try:
            out[f"{size[0]}x{size[1]}"] = definition.output_dim(params, size)
        except SpecError as exc:
            reason = str(exc).removeprefix(f"feature {definition.name!r} ")
            if "give no output length" in reason and problems:  # a parameter without a usable default
                reason = "needs parameters: " + problems[0].removeprefix(f"feature {definition.name!r}: ")
            out[f"{size[0]}x{size[1]}"] = reason
    return out


def describe(name: str) -> dict[str, Any]:
    """Everything ``featurize extractors NAME --json`` prints about one extractor."""
    definition = lookup(name)
    section = doc_sections().get(name)
    prose, meanings = parse_docstring(docstring(definition))
    if section is not None:
        prose, meanings = section.description or prose, {**meanings, **section.params}
    params = [{"name": key, "default": value, "meaning": meanings.get(key, "")}
              for key, value in definition.defaults.items()]
    text = prose or "(no description)"
    artifact = definition.artifact
    return {
        "name": definition.name, "version": definition.version, "view": definition.view,
        "tags": sorted(definition.tags), "description": text, "summary": one_line(text),
        "params": params, "formula": section.formula if section else None, "dims": dims(definition),
        "fits": f"{artifact.what} (OUT/artifacts/<column>.{artifact.what}.{artifact.ext})" if artifact else None,
        "documented": section is not None,
    }


def did_you_mean(name: str, known: list[str]) -> str:
    """``"; did you mean 'hog'?"`` for a misspelt extractor name (any case), or the extractor whose
    documented parameter takes `name` as a value (``sift``: ``keypoints_bovw``'s ``descriptor``); else ``""``."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    if close:
        return f"; did you mean {lowered[close[0]]!r}?"
    word = re.escape(str(name).lower())
    for extractor, section in sorted(doc_sections().items()):
        for param, meaning in section.params.items():
            if extractor in known and re.match(rf"^(?:one of )?([\w-]+(?: \([^)]*\))?, )*{word}\b", meaning.lower()):
                return f"; did you mean {extractor!r} (its parameter {param} takes {name})?"
    return ""


def lookup(name: str) -> registry.ExtractorDef:
    """The extractor `name`, or a UserError listing the known ones (and the closest name)."""
    try:
        return registry.get(name)
    except SpecError:
        known = registry.names()
        raise UserError(f"unknown extractor {name!r}; known: {', '.join(known)}{did_you_mean(name, known)}") from None


def listing() -> list[dict[str, Any]]:
    """One entry per registered extractor, sorted by name."""
    out = []
    for name in registry.names():
        entry = describe(name)
        out.append({key: entry[key] for key in ("name", "view", "version", "tags", "summary")}
                   | {"dim": entry["dims"]["224x224"]})
    return out


def format_listing(entries: list[dict[str, Any]]) -> str:
    width = max([16] + [len(e["name"]) + 2 for e in entries])
    lines = [f"{'name':<{width}}{'view':<6}{'version':<9}{'dim at 224x224':<16}description"]
    for e in entries:
        dim = e["dim"] if isinstance(e["dim"], int) else "-"
        tags = f" [{', '.join(e['tags'])}]" if e["tags"] else ""
        lines.append(f"{e['name']:<{width}}{e['view']:<6}{e['version']:<9}{dim!s:<16}{e['summary']}{tags}")
    lines.append(f"{len(entries)} extractors; `featurize extractors NAME` shows one's parameters")
    return "\n".join(lines)


def format_detail(entry: dict[str, Any], width: int = 100) -> str:
    tags = f", tags {', '.join(entry['tags'])}" if entry["tags"] else ""
    lines = [f"{entry['name']} (version {entry['version']}, view {entry['view']}{tags})"]
    lines += textwrap.wrap(entry["description"], width) or ["(no description)"]
    lines.append("")
    if entry["params"]:
        name_w = max(len("parameter"), *(len(p["name"]) for p in entry["params"])) + 2
        default_w = max(len("default"), *(len(_value(p["default"])) for p in entry["params"])) + 2
        lines.append(f"{'parameter':<{name_w}}{'default':<{default_w}}meaning")
        indent = " " * (name_w + default_w)
        for p in entry["params"]:
            head = f"{p['name']:<{name_w}}{_value(p['default']):<{default_w}}"
            wrapped = textwrap.wrap(p["meaning"], width - len(indent)) or [""]
            lines.append((head + wrapped[0]).rstrip())
            lines += [indent + more for more in wrapped[1:]]
    else:
        lines.append("no parameters")
    lines.append("")
    lines.append(f"output dimension {entry['formula']}" if entry["formula"] else "output dimension")
    for size, dim in entry["dims"].items():
        lines.append(f"  at {size} with the defaults: {dim}")
    if entry["fits"]:
        lines.append(f"fits             its {entry['fits']} on a sample of the train split before the main pass")
    if entry["documented"]:
        lines.append(f"reference        docs/EXTRACTORS.md, section {entry['name']}")
    return "\n".join(lines)
