"""`python -m service load FILE...`: a whole catalogue into the store, from NDJSON files.

Each line is one work exactly as `POST /items` takes one (`id`, `artist_id`, `features` or
`features_b64`, `edition_size`, `stock`, `metadata`): it is read by the same request model and
checked, embedded and stored by the same code (service.ingest), so a loaded work is what the
same upload would have made. What differs is the size of a write: batches of thousands of
lines, each one transaction (SQLite) or one script (Redis), all or nothing, each work logged in
the change log so that services running on the store follow at once.

A bad line stops the load with its file and line number, and nothing of its batch is written;
the batches before it stay written. Works are written by id, so running the same command
again once the line is fixed writes each loaded work again as it was, keys and sales kept.
`--check` reads, checks and embeds every line without writing anything, reporting every bad
line (the first 20 are shown) rather than stopping at the first bad batch.

Works are embedded by the model the store's services serve (the one last rolled out or
started with), else by CURATORNET_MODEL_DIR: a load never changes the fleet's model.

Reading a line (parsing, validating, decoding, checking) costs about as much as embedding it
and storing it take together, so the three run at once on three batches (`load`).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Full, Queue
from typing import BinaryIO

from pydantic import ValidationError

from curatornet.model_loader import LoadedModel
from service import upload_json
from service.api.items import ItemIn, plain_upload
from service.config import Settings
from service.indexing import CatalogueIndex
from service.ingest import Prepared, Upload, UploadRefused, embed, prepare
from service.stores.base import ItemsRefused, NewItem, UpsertResult

log = logging.getLogger("service.load")
STDIN = "-"
# Lines per batch, by store. Into SQLite a batch is one transaction of about 23 MB (2048-d
# works), a few a second, which readers never wait for. Into Redis it is one script, and Redis
# runs nothing else meanwhile: batches of 5,000 held the fleet's recommendations up to 0.45 s
# each, batches of 1,000 (as many as one POST /items takes) 0.14 to 0.26 s, at the same rate.
# The command holds three batches at once (0.6 GB at 5,000 works of 2,048 numbers).
SQLITE_BATCH_ITEMS, REDIS_BATCH_ITEMS = 5000, 1000
MAX_REPORTED = 20  # problems reported by one run; the rest are counted
PER_LINE = 3  # problems reported of one line


def batch_items(store_url: str) -> int:
    """Lines per batch into the store at `store_url`, unless the command is told otherwise."""
    return SQLITE_BATCH_ITEMS if store_url.startswith("sqlite:") else REDIS_BATCH_ITEMS


class LoadRefused(Exception):
    """Bad lines (each "FILE:LINE: what is wrong"); their batch was not written."""

    def __init__(self, problems: list[str], written: int) -> None:
        shown = problems[:MAX_REPORTED]
        if len(problems) > MAX_REPORTED:
            shown.append(f"... and {len(problems) - MAX_REPORTED} more")
        super().__init__("\n".join(shown))
        self.problems = problems
        self.written = written  # works of the batches before, which were written


@dataclass(frozen=True)
class Lines:
    """Consecutive lines of one file as read, blank ones included (they are skipped)."""

    source: str
    first: int  # the number of the first line
    data: list[bytes]


@dataclass
class Read:
    """A batch of lines read and checked: the uploads prepared for embedding, each with its
    line, and what is wrong with the other lines."""

    source: str
    lines: list[int] = field(default_factory=list)
    prepared: Prepared | None = None
    problems: list[str] = field(default_factory=list)

    def where(self, upload: int) -> str:
        return f"{self.source}:{self.lines[upload]}"


@dataclass
class Loaded:
    """What a load did so far."""

    works: int = 0
    created: int = 0
    updated: int = 0
    seconds: float = 0.0


def load(
    paths: list[str],
    catalogue: CatalogueIndex,
    settings: Settings,
    batch_items: int,
    check: bool,
) -> Loaded:
    """Load (or with `check`, only read, check and embed) the works of these NDJSON files, in
    batches of `batch_items` lines; LoadRefused for bad lines.

    Three threads work on three batches at once: one reads the next batch, this one embeds the
    current one, one writes the one before (ONNX Runtime, numpy and SQLite let go of the
    interpreter while they work). So a batch's works are judged outsized against the
    catalogue as indexed before the batch ahead of it was written; batches are written in
    order, and none after a bad one.
    """
    started = time.perf_counter()
    loaded = Loaded()
    first_seen: dict[str, str] = {}  # id -> where it was first given, across every file
    problems: list[str] = []
    reader = Reader(catalogue.serving.model, settings, check)
    writing: tuple[Read, list[NewItem], Future[UpsertResult]] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="load-writer") as writer:
        for read in _ahead(map(reader.read, _batches(paths, batch_items))):
            found = read.problems + _repeated_ids(read, first_seen)
            items: list[NewItem] = []
            if read.prepared is not None and (check or not found):
                try:
                    items = embed(read.prepared, catalogue.serving, settings)
                except UploadRefused as refused:
                    found += [
                        f"{read.where(p.upload)}: {_located(p.where)}{p.message}"
                        for p in refused.problems
                    ]
            if writing is not None:
                _written(*writing, loaded, started)
                writing = None
            if found and not check:
                raise LoadRefused(found, loaded.works)
            problems += found
            if check:
                loaded.works += len(items)
                _progress("checked", loaded, read, started)
            elif items:
                writing = read, items, writer.submit(catalogue.upsert_items, items)
        if writing is not None:
            _written(*writing, loaded, started)
    if problems:
        raise LoadRefused(problems, 0)
    return loaded


def _written(
    read: Read, items: list[NewItem], writing: Future[UpsertResult], loaded: Loaded, started: float
) -> None:
    """Wait for a batch's write and count it; LoadRefused, naming the lines, when the store
    refused it (a stock beyond what an edition has left unsold)."""
    try:
        result = writing.result()
    except ItemsRefused as error:
        at = {item.id: n for n, item in enumerate(items)}
        located = [f"{read.where(at[i])}: stock: {error.reason}" for i in error.item_ids]
        raise LoadRefused(located, loaded.works) from None
    loaded.works += len(items)
    loaded.created += len(result.created)
    loaded.updated += len(result.updated)
    _progress("loaded", loaded, read, started)


def _progress(done: str, loaded: Loaded, read: Read, started: float) -> None:
    loaded.seconds = time.perf_counter() - started
    log.info(
        "%s %d works (%s, to line %d): %.0f works/s",
        done,
        loaded.works,
        read.source,
        read.lines[-1] if read.lines else 0,
        loaded.works / loaded.seconds,
    )


class Reader:
    """Turns lines into prepared uploads, as POST /items reads and checks a request's."""

    def __init__(self, model: LoadedModel, settings: Settings, check: bool) -> None:
        self.model, self.settings, self.check = model, settings, check

    def read(self, lines: Lines) -> Read:
        read = Read(lines.source)
        uploads: list[Upload] = []
        first_line: dict[str, int] = {}
        for number, line in enumerate(lines.data, lines.first):
            if line.isspace():
                continue
            upload, problems = _parsed(line)
            where = f"{lines.source}:{number}"
            if upload is None:
                read.problems += [f"{where}: {problem}" for problem in problems]
            elif (first := first_line.setdefault(upload.id, number)) != number:
                read.problems.append(f"{where}: id: {upload.id!r} repeats {lines.source}:{first}")
            else:
                read.lines.append(number)
                uploads.append(upload)
        # Checked again without the refused ones, when every bad line is wanted (--check).
        while uploads and (self.check or not read.problems):
            try:
                prepared = prepare(uploads, self.model, self.settings)
            except UploadRefused as refused:
                read.problems += [
                    f"{read.where(p.upload)}: {_located(p.where)}{p.message}"
                    for p in refused.problems
                ]
                bad = {p.upload for p in refused.problems}
                uploads = [u for n, u in enumerate(uploads) if n not in bad]
                read.lines = [line for n, line in enumerate(read.lines) if n not in bad]
                continue
            # Each vector is in `prepared.features` now: the batch does not keep it twice while
            # it waits (up to three batches are in memory: read ahead, waiting, written).
            unloaded = [upload.without_features() for upload in uploads]
            read.prepared = replace(prepared, uploads=unloaded)
            break
        return read


def _ahead(reads: Iterator[Read]) -> Iterator[Read]:
    """The same reads, each made by a thread while the caller works on the one before."""
    handed: Queue[Read | BaseException | None] = Queue(maxsize=1)
    stopping = threading.Event()

    def hand(item: Read | BaseException | None) -> bool:
        while not stopping.is_set():
            try:
                handed.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for read in reads:
                if not hand(read):
                    return
            hand(None)
        except BaseException as error:  # for the caller to raise
            hand(error)

    thread = threading.Thread(target=produce, name="load-reader", daemon=True)
    thread.start()
    try:
        while (item := handed.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stopping.set()
        thread.join()


def _batches(paths: list[str], batch_items: int) -> Iterator[Lines]:
    """The files' lines, `batch_items` of them (blank ones aside) at a time; a batch never
    spans two files."""
    for path in paths:
        source = "<stdin>" if path == STDIN else path
        with _opened(path) as lines:
            batch: list[bytes] = []
            first, size = 1, 0
            for number, line in enumerate(lines, 1):
                batch.append(line)
                size += not line.isspace()
                if size == batch_items:
                    yield Lines(source, first, batch)
                    batch, first, size = [], number + 1, 0
            if size:
                yield Lines(source, first, batch)


def _opened(path: str) -> BinaryIO:
    # A buffer of many lines: a 2048-d work's line is 11-16 KB, more than the default 8 KB.
    return sys.stdin.buffer if path == STDIN else Path(path).open("rb", buffering=1 << 20)


def _parsed(line: bytes) -> tuple[Upload | None, list[str]]:
    """One line as an upload, or what is wrong with it, in the words of POST /items' 400 and
    422 answers."""
    try:
        document = upload_json.loads(line)
    except json.JSONDecodeError as error:
        return None, [f"not JSON: {error.msg} (character {error.pos})"]
    except ValueError as error:  # bytes that are not text in any encoding JSON allows
        return None, [f"not JSON: {error}"]
    except RecursionError:
        return None, ["not JSON this reader can follow: nested too deeply"]
    upload = plain_upload(document)
    if upload is not None:
        return upload, []
    try:
        return ItemIn.model_validate(document).upload(), []
    except ValidationError as error:
        problems = [f"{_located(e['loc'])}{e['msg']}" for e in error.errors()]
        if len(problems) > PER_LINE:  # 2048 features as strings are 2048 problems
            problems[PER_LINE:] = [f"and {len(problems) - PER_LINE} more problems on this line"]
        return None, problems


def _located(where: tuple[str | int, ...]) -> str:
    """A problem's place in the line: `features.17: `, `metadata: `, or nothing."""
    return ".".join(map(str, where)) + ": " if where else ""


def _repeated_ids(read: Read, first_seen: dict[str, str]) -> list[str]:
    """The batch's works whose id an earlier line of the load gave: a work given twice is
    refused wherever the two lines are (POST /items refuses it within one request), since
    which one wins would otherwise depend on where a batch ends."""
    uploads = read.prepared.uploads if read.prepared is not None else []
    repeated = []
    for n, upload in enumerate(uploads):
        here = read.where(n)
        if (first := first_seen.setdefault(upload.id, here)) != here:
            repeated.append(f"{here}: id: {upload.id!r} repeats {first}")
    return repeated
