"""``featurize validate``: check a spec and its paths without running anything.

Every problem at once, each with where it is: the spec loader already collects
one problem per section and one per feature parameter (:class:`featurelib.spec.Problems`);
this module splits its message back into problems, finds the key path each one
names, and the YAML line of that key (``yaml.compose`` keeps every node's
position), so a problem reads ``spec.yaml:14: features[0].params.bins: must be ...``.
Then the paths: the input exists and is a folder with files or a readable
manifest; the output is one a run may use (:func:`featurelib.driver.refuse_output`,
nothing created) and can be created or written; saved artefacts and weights
files exist. Nothing is written anywhere.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from featurelib import registry
from featurelib.catalog import did_you_mean
from featurelib.errors import SpecError, UserError
from featurelib.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: the YAML line (1-based, None when unknown), the key path it names (or a
    command-line flag), and the message without that path."""

    line: int | None
    path: str | None
    message: str

    def format(self, name: str, kind: str = "") -> str:
        """``spec.yaml:12: features[1].params.bins: must be ...`` (`kind`: ``"warning: "`` or nothing)."""
        where = f"{name}:{self.line}" if self.line is not None else name
        return f"{where}: {kind}{self.path}: {self.message}" if self.path else f"{where}: {kind}{self.message}"


@dataclasses.dataclass
class Validation:
    """What :func:`validate` found: problems (exit 2 when any), warnings, notes, and the spec's
    size when it parsed."""

    name: str
    problems: list[Problem] = dataclasses.field(default_factory=list)
    warnings: list[Problem] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    spec: RunSpec | None = None
    dim: int | None = None

    def lines(self) -> list[str]:
        """What ``featurize validate`` prints: the OK line (or the problem count), then one line each."""
        out = []
        if not self.problems and self.spec is not None:
            n = len(self.spec.features)
            height, width = self.spec.image.size
            out.append(f"{self.name}: OK ({n} feature{'s' if n != 1 else ''}, dim {self.dim} at image size "
                       f"{height}x{width})")
        else:
            n = len(self.problems)
            out.append(f"{self.name}: {n} problem{'s' if n != 1 else ''}")
            ordered = sorted(self.problems, key=lambda p: (p.line is None, p.line or 0))  # by line, flags last
            out += [f"  {p.format(self.name)}" for p in ordered]
        out += [f"  {w.format(self.name, 'warning: ')}" for w in self.warnings]
        out += [f"  note: {note}" for note in self.notes]
        return out


# --- where each key is -------------------------------------------------------------------------


def key_lines(text: str) -> tuple[dict[str, int], list[Problem]]:
    """``{key path: 1-based line}`` of every key and list item of a YAML document, and a warning for
    each key repeated in one mapping (YAML keeps the last one silently).

    Paths are written as the spec's messages write them: ``image.size``, ``features[1].params.bins``.
    """
    lines: dict[str, int] = {}
    warnings: list[Problem] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines, warnings

    def walk(node: Any, path: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue
                child = f"{path}.{key.value}" if path else str(key.value)
                line = key.start_mark.line + 1
                if key.value in seen:
                    warnings.append(Problem(line, child, f"repeats the key of line {seen[key.value]}; YAML keeps "
                                                         f"this later value only"))
                seen[key.value] = line
                lines[child] = line
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = f"{path}[{index}]"
                lines[child] = item.start_mark.line + 1
                walk(item, child)

    walk(root, "")
    return lines, warnings


def line_of(lines: Mapping[str, int], path: str | None) -> int | None:
    """The line of `path`, or of its nearest ancestor written in the spec (a default has no line)."""
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


# --- from the loader's messages to problems -----------------------------------------------------


def split_messages(message: str) -> list[str]:
    """The single problems of a SpecError message (one, or the loader's numbered list)."""
    head = re.match(r"^(\d+) problems in the spec:\n", message)
    if not head:
        return [message]
    body = message[head.end():]
    count = int(head.group(1))
    # Each item starts "  N. " at a line start; split on the expected numbers only, in order, so a
    # message holding a newline stays whole.
    items, start = [], body.find("  1. ")
    for number in range(2, count + 2):
        marker = f"\n  {number}. "
        end = body.find(marker, start) if number <= count else len(body)
        items.append(body[start + len(f"  {number - 1}. "): end if end >= 0 else len(body)].strip("\n"))
        start = end + 1
    return items


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _literal_list(text: str) -> list[str]:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


class _Locator:
    """Turns one loader message into a :class:`Problem` (path, line, message without the path)."""

    def __init__(self, doc: Any, lines: Mapping[str, int]) -> None:
        self.lines = lines
        raw = doc.get("features") if isinstance(doc, Mapping) else None
        self.features = [f if isinstance(f, Mapping) else {} for f in raw] if isinstance(raw, list) else []
        self.top = set(k for k in (doc or {}) if isinstance(k, str)) if isinstance(doc, Mapping) else set()

    def _feature(self, name: str, *, param: str | None = None, nth: int = 0) -> int | None:
        """Index of the feature named (or whose column is) `name`: the `nth` one, preferring one that
        writes `param`."""
        matches = [i for i, f in enumerate(self.features) if name in (f.get("name"), f.get("column"))]
        if param is not None:
            writing = [i for i in matches if isinstance(self.features[i].get("params"), Mapping)
                       and param in self.features[i]["params"]]
            matches = writing + [i for i in matches if i not in writing]
        return matches[nth] if len(matches) > nth else (matches[0] if matches else None)

    def problem(self, path: str | None, message: str) -> Problem:
        return Problem(line_of(self.lines, path), path, message)

    def locate(self, message: str) -> Problem:
        found = re.match(r"^unknown key\(s\) (\[.*?\]) in (the spec|\S+); allowed: (\[.*\])$", message)
        if found:
            keys, allowed = _literal_list(found.group(1)), _literal_list(found.group(3))
            where = "" if found.group(2) == "the spec" else found.group(2)
            first = keys[0] if keys else ""
            path = f"{where}.{first}" if where else first
            hint = _suggest(first, allowed) if len(keys) == 1 else ""
            return self.problem(path or None, f"unknown key; allowed: {', '.join(allowed)}{hint}"
                                if len(keys) == 1 else message)
        found = re.match(r"^unknown extractor '(.*?)'; known: (\[.*\])$", message)
        if found:
            index = self._feature(found.group(1))
            known = _literal_list(found.group(2))
            path = f"features[{index}].name" if index is not None else "features"
            return self.problem(path, f"unknown extractor {found.group(1)!r}; known: {', '.join(known)}"
                                      f"{did_you_mean(found.group(1), known)}")
        found = re.match(r"^feature '(\w+)': unknown parameter\(s\) (\[.*?\]); known: (\[.*\])$", message)
        if found:
            params, known = _literal_list(found.group(2)), _literal_list(found.group(3))
            first = params[0] if params else None
            index = self._feature(found.group(1), param=first)
            base = f"features[{index}].params" if index is not None else "features"
            hint = _suggest(first, known) if len(params) == 1 else ""
            text = (f"unknown parameter of {found.group(1)}; known: {', '.join(known)}{hint}" if len(params) == 1
                    else f"unknown parameters {params} of {found.group(1)}; known: {', '.join(known)}")
            return self.problem(f"{base}.{first}" if len(params) == 1 and index is not None else base, text)
        found = re.match(r"^feature '(\w+)'(: | )(.*)$", message, flags=re.S)
        if found:
            name, rest = found.group(1), found.group(3)
            param = re.match(r"^(\w+)(: | )", rest)
            defaults = self._defaults(name)
            if found.group(2) == ": " and param and param.group(1) in defaults:
                index = self._feature(name, param=param.group(1))
                if index is not None:
                    text = rest[param.end():]
                    return self.problem(f"features[{index}].params.{param.group(1)}", text)
            index = self._feature(name)
            return self.problem(f"features[{index}]" if index is not None else "features", message)
        found = re.match(r"^duplicate feature column\(s\) (\[.*?\])", message)
        if found:
            columns = _literal_list(found.group(1))
            index = self._feature(columns[0], nth=1) if columns else None
            return self.problem(f"features[{index}]" if index is not None else "features", message)
        found = re.match(r"^([A-Za-z_]\w*(?:\[\d+\])?(?:\.\w+(?:\[\d+\])?)*)(: | must | )", message)
        if found and (found.group(1).split(".")[0].split("[")[0] in self.top | {"features", "spec_version"}):
            path, sep = found.group(1), found.group(2)
            if sep == ": ":
                return self.problem(path, message[found.end():])
            if sep == " must ":
                text = message[len(path) + 1:]
                if re.fullmatch(r"features\[\d+\]", path) and text.endswith("got str"):
                    text += " (write '- name: EXTRACTOR', with 'params:' under it)"
                return self.problem(path, text)
            return self.problem(path, message)
        return self.problem(None, message)

    def _defaults(self, name: str) -> Mapping[str, Any]:
        try:
            return registry.get(name).defaults
        except SpecError:
            return {}


# --- paths ----------------------------------------------------------------------------------------


def check_input(path: str, storage_options: Mapping[str, Any]) -> str | None:
    """Why `path` cannot be a run's input (None: it can). Reads a manifest; walks a folder only up to
    its first file."""
    from featurelib.sources import is_local, list_manifest

    manifest = path.lower().endswith((".csv", ".parquet"))
    if is_local(path):
        local = path.removeprefix("file://")
        if not os.path.exists(local):
            return f"input {path!r} does not exist"
        if os.path.isdir(local):
            for _, dirnames, filenames in os.walk(local):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                if any(not name.startswith(".") for name in filenames):
                    break
            else:
                return f"input folder {path!r} holds no files"
            return None
        if not manifest:
            return f"input {path!r} is a file, not a folder or a .csv/.parquet manifest"
    elif not manifest:
        try:
            import fsspec

            fs, base = fsspec.core.url_to_fs(path, **storage_options)
            if not fs.isdir(base):
                return f"input {path!r} is not a folder (or a .csv/.parquet manifest) of its store"
        except Exception as exc:  # a missing driver, refused credentials, no network: one line (no secrets)
            return f"cannot look at input {path!r}: {type(exc).__name__}: {exc}"
        return None
    try:
        list_manifest(path, storage_options=storage_options)
    except UserError as exc:
        return str(exc)
    return None


def check_output_path(spec: RunSpec, *, overwrite: bool) -> str | None:
    """Why a run could not use ``output.path`` (None: it can): the driver's rules
    (:func:`featurelib.driver.refuse_output`), then whether the folder can be written or created."""
    from featurelib.driver import refuse_output
    from featurelib.io.outfs import is_remote

    root = spec.output.path
    try:
        refuse_output(spec, overwrite=overwrite)
    except UserError as exc:
        return str(exc)
    if is_remote(root):  # the store answered the listing above; writing is tried by the run itself
        return None
    local = root.removeprefix("file://")
    existing = os.path.abspath(local)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"output {root!r} cannot be created: {existing!r} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "written" if existing == os.path.abspath(local) else f"created (no write permission in {existing!r})"
        return f"output {root!r} cannot be {verb}"
    return None


# --- the command ------------------------------------------------------------------------------------


def _spec_problems(text: str, result: Validation) -> tuple[Any, dict[str, int]]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        result.problems.append(Problem(mark.line + 1 if mark else None, None, f"not valid YAML: {problem}"))
        return None, {}
    lines, repeated = key_lines(text)
    result.warnings += repeated
    try:
        result.spec = RunSpec.from_dict(doc)
    except SpecError as exc:
        locator = _Locator(doc, lines)
        result.problems += [locator.locate(message) for message in split_messages(str(exc))]
    return doc, lines


def validate(spec_path: str, *, input: str | None = None, output: str | None = None,
             overwrite: bool = False) -> Validation:
    """Check the spec at `spec_path` (with the command line's ``--input`` / ``--output``) and its paths.

    Never raises for a problem of the spec or its paths: they are all in the returned
    :class:`Validation`.
    """
    from featurelib.passes import check_saved_artifacts
    from featurelib.sources import is_local

    name = spec_path
    result = Validation(name)
    try:
        with open(spec_path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        result.problems.append(Problem(None, None, f"cannot read spec: {exc.strerror or exc}"))
        return result
    except UnicodeDecodeError as exc:
        result.problems.append(Problem(None, None, f"cannot read spec: not UTF-8 text (byte {exc.start})"))
        return result
    doc, lines = _spec_problems(text, result)
    parsed = result.spec
    # The paths are checked even when the spec has problems: from the parts of it that parsed.
    spec = (parsed or _paths_only(doc)).with_overrides(input=input, output=output)
    locator = _Locator(doc, lines)

    def where(flag_value: str | None, flag: str, key: str) -> tuple[int | None, str]:
        return (None, flag) if flag_value is not None else (line_of(lines, key), key)

    if spec.input.path:
        why = check_input(spec.input.path, spec.input.storage_options)
        if why:
            result.problems.append(Problem(*where(input, "--input", "input.path"), why))
    elif parsed is not None:
        result.notes.append("no input to check: set input.path in the spec or pass --input")
    if spec.output.path:
        checked = spec  # the run fingerprint holds the absolute input path (the output's is not in it)
        if spec.input.path and is_local(spec.input.path):
            checked = spec.with_overrides(input=os.path.abspath(spec.input.path.removeprefix("file://")))
        try:  # without a valid spec there is no run fingerprint to compare with one found there
            why = check_output_path(checked, overwrite=overwrite or parsed is None)
        except SpecError as exc:  # a weights file the fingerprint of a run found there cannot hash
            why = str(exc)
        if why:
            result.problems.append(Problem(*where(output, "--output", "output.path"), why))
    elif parsed is not None:
        result.notes.append("no output to check: set output.path in the spec or pass --output")
    if parsed is None:
        return result
    try:
        check_saved_artifacts(spec)
    except UserError as exc:
        result.problems.append(locator.locate(str(exc)))
    if not result.problems:
        result.dim = sum(dim for _, dim in spec.feature_dims())
    result.spec = spec
    return result


def _paths_only(doc: Any) -> RunSpec:
    """A stand-in spec holding only the input and output sections of `doc` that parse (the rest of
    the spec has problems), to check the paths anyway."""
    from featurelib.spec import InputSpec, OutputSpec

    def section(parse, key):
        try:
            return parse(doc.get(key) if isinstance(doc, Mapping) else None)
        except SpecError:
            return parse(None)

    return RunSpec(features=(), input=section(InputSpec.parse, "input"), output=section(OutputSpec.parse, "output"))
