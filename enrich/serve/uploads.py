"""An uploaded catalog before it is enriched: kept under a name the server makes, its bytes' digest (the same file
uploaded twice is named), and the column-mapping step, which shows a person what the file will become with the
roles of a columns file (and the image column the page shows) before anything is enriched."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl

from enrich.catalog import CatalogError, CleaningConfig, Columns
from enrich.catalog.formats import FORMATS
from enrich.catalog.read import FORMATS as SUFFIXES

UPLOAD_SUFFIXES = tuple(s for s in SUFFIXES if s not in (".txt", ".json", ".rss"))
KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
# The roles the page maps, as a columns file names them, and the words a person reads.
ROLES = {"id": "Listing id", "title": "Title", "brand": "Brand", "text": "Description (one or more columns)",
         "category": "Category it comes with", "tags": "Its own tags", "image": "Image address (shown, never fetched)"}
# Headers that hold an image address, in the forms the platforms write them (Shopify, WooCommerce, Google, Magento).
IMAGE_HEADERS = ("image", "image_url", "image url", "image_link", "image src", "images", "base_image", "imageurl",
                 "main_image", "picture", "photo")
DELIMITERS = {"": "detected", ",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
SAMPLE_ROWS = 5
REFUSED_SHOWN = 50


@dataclass
class Upload:
    """A file uploaded and not yet enriched: where it is kept and what it was."""

    key: str  # the server's name for it
    path: Path
    filename: str  # as the person's browser named it: shown, never used as a path
    name: str  # the batch name asked for
    digest: str  # sha256 of its bytes
    size: int

    def save_note(self) -> None:
        note = {"filename": self.filename, "name": self.name, "digest": self.digest, "size": self.size,
                "suffix": self.path.suffix}
        self.path.with_suffix(".json").write_text(json.dumps(note))


def new_upload(folder: Path, filename: str, name: str) -> tuple[Upload, "hashlib._Hash"]:
    """A fresh upload's place (the caller writes its bytes, feeding the digest); a suffix the readers do not know
    raises CatalogError."""
    suffix = Path(filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise CatalogError(f"'{filename}' is not a catalog file: upload {', '.join(UPLOAD_SUFFIXES)}")
    folder.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(18)
    return Upload(key, folder / f"upload-{key}{suffix}", filename, name or Path(filename).stem, "", 0), hashlib.sha256()


def find_upload(folder: Path, key: str) -> Upload | None:
    if not KEY.match(key):
        return None
    note_path = folder / f"upload-{key}.json"
    if not note_path.exists():
        return None
    note = json.loads(note_path.read_text())
    return Upload(key, folder / f"upload-{key}{note['suffix']}", note["filename"], note["name"], note["digest"], note["size"])


@dataclass
class Check:
    """What the file becomes with a mapping: or why it cannot be read at all."""

    columns: Columns  # as read: a named export's preset applied
    headers: list[str]
    image: str | None = None
    error: str | None = None
    counts: dict = field(default_factory=dict)  # rows, usable, merged, refused
    refused: list[dict] = field(default_factory=list)  # row, id, reason
    sample: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    export: str | None = None  # the named export recognised

    @property
    def ready(self) -> bool:
        return self.error is None and self.counts.get("usable", 0) > 0


def guessed_image(headers: list[str]) -> str | None:
    by_name = {h.strip().lower(): h for h in headers}
    return next((by_name[n] for n in IMAGE_HEADERS if n in by_name), None)


def check(upload: Upload, columns: Columns, image: str | None, cleaning: CleaningConfig) -> Check:
    """Read the upload with `columns` as `enrich run` will, and say what came of it."""
    from enrich.catalog.inspect import reading_notes
    from enrich.catalog.load import read_catalog
    from enrich.catalog.read import read_raw

    try:
        headers = read_raw(upload.path, columns.encoding, columns.delimiter)[0].columns
    except CatalogError as error:
        return Check(columns, [], error=told(error, upload))
    if image is None:
        image = guessed_image(headers)
    try:
        catalog = read_catalog(upload.path, columns, cleaning)
    except CatalogError as error:
        return Check(columns, headers, image if image in headers else None, error=told(error, upload))
    frame, details = catalog.frame, catalog.details
    status = frame["status"]
    counts = {"rows": frame.height, "usable": int((status == "ok").sum()), "merged": int(status.str.starts_with("merged:").sum()),
              "refused": int(status.str.starts_with("refused:").sum())}
    refused = [{"row": r, "id": i, "reason": s.split(" ", 3)[3] if s.count(" ") >= 3 else s}
               for r, i, s in frame.filter(pl.col("status").str.starts_with("refused:")).select("row", "id", "status")
               .head(REFUSED_SHOWN).iter_rows()]
    sample = frame.filter(pl.col("status") == "ok").head(SAMPLE_ROWS).select("row", "id", "title", "brand", "category", "text")
    return Check(details.columns, headers, image if image in headers else None, counts=counts, refused=refused,
                 sample=sample.to_dicts(), notes=reading_notes(details),
                 export=details.export.label if details.export else None)


def told(error: CatalogError, upload: Upload) -> str:
    """A reading error in the person's words: their file's name, not the server's path; the page's fields, not flags."""
    message = str(error).replace(str(upload.path), f"'{upload.filename}'")
    message = re.sub(r"no column '' for the (\w+) \(columns are: [^)]*\); name it with --\w+-col or a --columns mapping file",
                     r"which column holds the \1? Choose it below", message)
    message = re.sub(r"say so with --delimiter (\S+)", r"choose \1 under 'How the file is written'", message)
    return re.sub(r"name it with --(\w+)-col or a --columns mapping file", r"choose the \1 column below", message)


GUESSES = {"id": ("id", "sku", "handle", "uniq_id", "product_id", "item_id"),
           "title": ("title", "name", "product_name", "product name", "product_title"),
           "brand": ("brand", "vendor", "manufacturer"), "text": ("description", "body (html)", "body", "short_description"),
           "category": ("category", "categories", "product_type", "product category", "google_product_category"),
           "tags": ("tags", "keywords")}


def first_columns(headers: list[str], server: Columns) -> Columns:
    """The mapping to start from: the server's columns where the file has their id and title; the defaults where the
    headers are a named export's (its preset applies); else the server's roles the file has, each other one guessed
    from the usual header names."""
    if server.id in headers and server.title in headers:
        return server
    if any(all(h in headers for h in export.headers) for export in FORMATS):
        return replace(Columns(), encoding=server.encoding, delimiter=server.delimiter)
    by_name = {h.strip().lower(): h for h in headers}
    changes = {}
    for role, names in GUESSES.items():
        named = getattr(server, role)
        named = [named] if isinstance(named, str) else list(named or ())
        if not named or not all(n in headers for n in named):
            guess = next((by_name[n] for n in names if n in by_name), "")
            changes[role] = ((guess,) if guess else ()) if role == "text" else guess
    return server.updated(source="the mapping", **changes)


def mapped(form, base: Columns) -> tuple[Columns, str | None]:
    """The roles a mapping form chose, over `base` for what it leaves out (\"\" is no column); and the image column."""
    roles = {role: form.get(role) for role in ("id", "title", "brand", "category", "tags") if role in form}
    if "mapped" in form:  # a submitted form: no description box ticked is no description
        roles["text"] = tuple(form.getlist("text"))
    for setting in ("encoding", "delimiter", "category_separator"):
        if form.get(setting):
            roles[setting] = form.get(setting)
    columns = base.updated(source="the mapping", **roles)
    for setting in ("delimiter", "category_separator"):
        if setting in form and not form.get(setting):
            columns = replace(columns, **{setting: None})
    if "format" in form:
        columns = columns.updated(format=form.get("format")) if form.get("format") else replace(columns, format=None)
    return columns, (form.get("image") or None)


def images(upload: Upload, columns: Columns, image: str | None) -> dict[int, str]:
    """Each row's image address, where it is an https address (the first of a list): row numbers as the reader counts."""
    if not image:
        return {}
    from enrich.catalog.read import read_raw

    raw = read_raw(upload.path, columns.encoding, columns.delimiter)[0]
    if image not in raw.columns:
        return {}
    found = {}
    for row, cell in enumerate(raw[image].to_list(), start=1):
        first = re.split(r"[,\s|]+", (cell or "").strip(), maxsplit=1)[0]
        if re.match(r"^https://[^\s\"'<>]+$", first):  # the pages allow images from https addresses only
            found[row] = first[:2000]
    return found


def role_columns(columns: Columns) -> dict[str, list[str]]:
    """The column each role reads (several for the description), as the form shows them selected."""
    category = columns.category
    return {"id": [columns.id], "title": [columns.title], "brand": [columns.brand or ""], "text": list(columns.text),
            "category": [category] if isinstance(category, str) or category is None else list(category),
            "tags": [columns.tags or ""]}


FORMAT_NAMES = {export.name: export.label for export in FORMATS}
