"""Reading manifests: files, directories and stdin; multi-document YAML and JSON; `kind: List`."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from schemas import BY_KIND, Resource

from .context import CliError

EXTENSIONS = (".yaml", ".yml", ".json")


@dataclass
class Document:
    source: str  # the file name as given ("-" for stdin)
    index: int  # 1-based position of the document in its source
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f'"{self.source}" (document {self.index})'

    @property
    def kind(self) -> str:
        return str(self.body.get("kind") or "")

    @property
    def name(self) -> str:
        meta = self.body.get("metadata")
        return str(meta.get("name") or "") if isinstance(meta, dict) else ""

    @property
    def namespace(self) -> str | None:
        meta = self.body.get("metadata")
        ns = meta.get("namespace") if isinstance(meta, dict) else None
        return str(ns) if ns else None

    def resource(self) -> Resource:
        """The resource of this document's kind, or CliError naming the document."""
        if not self.kind:
            raise CliError(f"error validating {self.where}: kind not set")
        r = BY_KIND.get(self.kind)
        if r is None:
            version = self.body.get("apiVersion") or ""
            raise CliError(f'unable to recognize {self.where}: no matches for kind "{self.kind}" in version "{version}"')
        return r


def expand_paths(paths: list[str]) -> list[str]:
    """`-` stays; a directory becomes its .yaml/.yml/.json files, sorted; a missing path is an error."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            out.append(p)
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
            out.extend(str(f) for f in files)
        elif path.exists():
            out.append(p)
        else:
            raise CliError(f'the path "{p}" does not exist')
    return out


def _parse(text: str, source: str) -> list[Any]:
    if source.lower().endswith(".json"):
        try:
            return [json.loads(text)]
        except ValueError as exc:
            raise CliError(f'error parsing "{source}": {exc}') from None
    try:
        return list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise CliError(f'error parsing "{source}": {" ".join(str(exc).split())}') from None


def load_source(source: str) -> list[Document]:
    """The documents of one file (or stdin), empty ones skipped, `kind: List` expanded."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise CliError(f'cannot read "{source}": {exc.strerror or exc}') from None
    docs: list[Document] = []
    for n, body in enumerate(_parse(text, source), start=1):
        if body is None:
            continue
        if not isinstance(body, dict):
            raise CliError(f'error parsing "{source}" (document {n}): a manifest must be a mapping, '
                           f"not {type(body).__name__}")
        if str(body.get("kind", "")).endswith("List") and isinstance(body.get("items"), list):
            for item in body["items"]:
                if not isinstance(item, dict):
                    raise CliError(f'error parsing "{source}" (document {n}): List items must be mappings')
                docs.append(Document(source, n, item))
        else:
            docs.append(Document(source, n, body))
    return docs
