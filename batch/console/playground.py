"""The mapping playground (issue 12 point 4): pick a feed, edit its mapping with its problems
marked on their lines as you type, preview what it makes of an archived file or an uploaded
sample, see what the edit changes on the feed's last archived files, save it; or start a new
mapping from a sample file.

Routes (mounted under /playground by batch.console.app):

    GET  /                      the feeds, each with its mapping and archive
    GET  /feed/{feed}           the editor
    GET  /feed/{feed}/version/{n}  {"version", "text"}: the earlier version NAME.yaml.n, to load
                                into the editor (a revert is an edit: diffed, then saved)
    POST /feed/{feed}/validate  {"text"} -> {"ok", "problems": [{"line", "column", "key", "message", "text"}]}
    POST /feed/{feed}/preview   form: text, and archived (a name in the archive) or sample (a file)
    POST /feed/{feed}/diff      {"text"} -> the diff of the mapping in force and `text` over the
                                feed's last archived files (batch.transform.mapdiff)
    POST /feed/{feed}/save      {"text", "base_hash"} -> {"saved", "hash", "kept"}; 422 with the
                                problems, 409 for a concurrent edit
    POST /feed/{feed}/new       form: sample (a file), template (a feed's name, or empty) ->
                                {"detected", "text"}: a first mapping, blank (fields from the
                                sample's column names) or the template feed's with the sample's layout

Every POST carries the CSRF token (the script sends it as X-CSRF-Token; security.CsrfMiddleware
checks it before any of these runs). The work itself (mapping files, the file system) runs in a
worker thread; diffs and previews one at a time per console (another one meanwhile is refused
with 429, not queued), checks as you type one at a time per session (``Checks``), so that an
administrator's clicks cannot stack up CPU-bound runs on the service's machine nor hold the
worker threads every page needs.

The engine is elsewhere: batch.transform.mapcheck (the text's problems, as `validate`),
batch.transform.mapdiff (diff and preview through the production mapping path),
batch.transform.samplefile (a sample's encoding, delimiter, header and a first mapping) and
batch.console.mapping_store (saving with versions, the archive).

How many archived files a diff reads and how many earlier versions a save keeps:
``console.playground_files`` (default 5) and ``console.mapping_versions`` (default 10) of the
service configuration.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from batch.config.mapping import Mapping
from batch.config.service import ConsoleSettings, FeedSettings
from batch.console.mapping_store import (
    ConcurrentEdit,
    MappingRefused,
    MappingSlotTaken,
    PlaygroundError,
    UnsafeFileName,
    archived_copy,
    archived_count,
    archived_files,
    last_archived_copies,
    mapping_versions,
    read_mapping,
    read_version,
    save_mapping,
)
from batch.console.render import console_state, current_user, render
from batch.console.security import SESSION_CSRF
from batch.transform.mapcheck import check_mapping_text
from batch.transform.mapdiff import DEFAULT_SAMPLE, diff_files, preview_file
from batch.transform.mapping import CompiledMapping
from batch.transform.samplefile import TemplateMismatch, detect_sample, mapping_from_template, proposed_mapping

log = logging.getLogger("batch.console.playground")

PREVIEW_LIMIT = 200  # records shown by a preview (all are counted)
ARCHIVE_SHOWN = 100  # archived files offered for a preview
_RUNS = threading.Semaphore(1)  # one diff or preview at a time


# --------------------------------------------------------------------------- helpers


def _feed(request: Request) -> FeedSettings:
    return _feed_named(request, request.path_params["feed"])


def _feed_named(request: Request, name: str) -> FeedSettings:
    feeds = console_state(request).loaded.config.feeds
    for feed in feeds:
        if feed.name == name:
            return feed
    raise HTTPException(404, f"no feed named {name!r}; the feeds are: {', '.join(f.name for f in feeds)}")


def _console_settings(request: Request) -> ConsoleSettings:
    """The configuration's `console:` (playground_files, mapping_versions), or its defaults."""
    return console_state(request).loaded.config.console or ConsoleSettings()


def _in_force(request: Request, feed: FeedSettings) -> Mapping:
    return console_state(request).loaded.mappings[feed.name]


def _error(status: int, message: str, **more: Any) -> JSONResponse:
    return JSONResponse({"error": message, **more}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the request is not JSON") from None
    except RecursionError:  # [[[[… a hundred thousand deep: the parser's recursion, not a 500
        raise HTTPException(400, "the request's JSON is nested too deeply") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request is not a JSON object")
    return body


def _text(body: dict[str, Any] | Any, key: str = "text") -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise HTTPException(400, f"the request has no {key!r} text")
    return value


class _Busy(Exception):
    """Another diff or preview is running (they run one at a time)."""


BUSY = "a preview or a diff is running already (one at a time on this console): try again when it has finished"


def _one_at_a_time(work: Callable[[], Any]) -> Any:
    # Refused rather than queued: a waiting request would hold one of the worker threads every page
    # shares (a few dozen clicks and no page of the console answers until the queue has drained)
    if not _RUNS.acquire(blocking=False):
        raise _Busy(BUSY)
    try:
        return work()
    finally:
        _RUNS.release()


class Checks:
    """The checks as you type that run now: one per session at a time, at most `most` in all.

    A check takes a worker thread for as long as the loader needs (a second for a megabyte of
    text); the editor sends one after each pause in the typing and waits for its answer before it
    sends the next. A burst of checks from one session (a script, a stuck key) is refused (429)
    beyond the first, not queued: queued, each would hold a worker thread that every page shares.
    Per session rather than the preview's one-at-a-time per console, so that one administrator's
    diff or typing does not stop another's problems from showing; `most` bounds the threads that
    sessions made without a login (on loopback) can take together."""

    def __init__(self, most: int = 4) -> None:
        self.most = most
        self._lock = threading.Lock()
        self._running: set[str] = set()

    def enter(self, session: str) -> str | None:
        """None when `session` may check now (then ``leave`` it), else why not."""
        with self._lock:
            if session in self._running:
                return CHECK_BUSY
            if len(self._running) >= self.most:
                return CHECKS_FULL
            self._running.add(session)
            return None

    def leave(self, session: str) -> None:
        with self._lock:
            self._running.discard(session)


CHECK_BUSY = "a check of this session's mapping is running already: its answer comes first, then check again"
CHECKS_FULL = "the console is checking other mappings now: try again in a moment"
_CHECKS = Checks()


# --------------------------------------------------------------------------- pages


def index(request: Request) -> Response:
    rows = []
    for feed in console_state(request).loaded.config.feeds:
        try:
            archive: str = f"{archived_count(feed):,} archived file(s)"
        except PlaygroundError as exc:
            archive = str(exc)
        rows.append({"name": feed.name, "mapping": feed.mapping.name, "archive": archive})
    return render(request, "playground.html", {"feeds": rows, "nav": "playground"})


def editor(request: Request) -> Response:
    feed = _feed(request)
    try:
        current = read_mapping(feed)
    except PlaygroundError as exc:
        raise HTTPException(500, str(exc)) from None
    archive_note = None
    archived: list[dict[str, Any]] = []
    try:
        archived = [{"name": f.name, "size": f.size} for f in archived_files(feed, ARCHIVE_SHOWN)]
    except PlaygroundError as exc:
        archive_note = str(exc)
    diff_files_count = _console_settings(request).playground_files
    return render(request, "playground_editor.html", {
        "feed": feed.name, "mapping_name": feed.mapping.name, "text": current.text, "base_hash": current.hash,
        "archived": archived, "archive_note": archive_note, "diff_files": diff_files_count,
        "templates": [{"feed": f.name, "mapping": f.mapping.name}
                      for f in console_state(request).loaded.config.feeds],
        "versions": mapping_versions(feed, _console_settings(request).mapping_versions),
        "nav": "playground",
    })


def version(request: Request) -> Response:
    feed = _feed(request)
    number = request.path_params["number"]
    try:
        return JSONResponse({"version": f"{feed.mapping.name}.{number}", "text": read_version(feed, number)})
    except PlaygroundError as exc:
        return _error(404, str(exc))


# --------------------------------------------------------------------------- as you type


async def validate(request: Request) -> Response:
    feed = _feed(request)
    text = _text(await _json_body(request))
    session = str(request.session.get(SESSION_CSRF))  # every session has one (the CSRF check passed)
    refused = _CHECKS.enter(session)
    if refused:
        return _error(429, refused)
    try:
        checked = await run_in_threadpool(check_mapping_text, text, feed.mapping.name)
    finally:
        _CHECKS.leave(session)
    return JSONResponse({"ok": checked.ok, "problems": [p.as_dict() for p in checked.problems]})


# --------------------------------------------------------------------------- preview


async def preview(request: Request) -> Response:
    feed = _feed(request)
    async with request.form(max_files=1, max_fields=10) as form:
        text = _text(form)
        checked = await run_in_threadpool(check_mapping_text, text, feed.mapping.name)  # seconds for a megabyte
        if checked.mapping is None:
            return _error(422, "the mapping has problems: fix them to preview",
                          problems=[p.as_dict() for p in checked.problems])
        compiled = CompiledMapping(checked.mapping)
        archived = form.get("archived")
        sample = form.get("sample")
        if isinstance(sample, UploadFile) and sample.filename:
            shown_name = os.path.basename(sample.filename)
            try:
                return await run_in_threadpool(_preview_upload, compiled, sample, shown_name)
            except _Busy:
                return _error(429, BUSY)
        if isinstance(archived, str) and archived:
            try:
                return await run_in_threadpool(_preview_archived, feed, compiled, archived)
            except _Busy:
                return _error(429, BUSY)
    return _error(400, "choose an archived file or upload a sample file to preview")


def _preview_archived(feed: FeedSettings, compiled: CompiledMapping, name: str) -> Response:
    # fetched through the feed's inbox (local or SFTP) into a temporary folder, removed afterwards
    try:
        with archived_copy(feed, name) as path:
            return _preview_path(compiled, path, name)
    except UnsafeFileName as exc:
        return _error(400, str(exc))
    except PlaygroundError as exc:
        return _error(404, str(exc))


def _preview_upload(compiled: CompiledMapping, sample: UploadFile, name: str) -> Response:
    # the readers read a path (the XML child opens it itself): the sample goes to a private temporary file,
    # copied a chunk at a time (the upload itself is spooled to disk: never the whole sample in memory)
    with tempfile.NamedTemporaryFile(prefix="playground-sample-") as temp:
        sample.file.seek(0)
        shutil.copyfileobj(sample.file, temp, 1 << 20)
        temp.flush()
        return _preview_path(compiled, Path(temp.name), name)


def _preview_path(compiled: CompiledMapping, path: Path, name: str) -> Response:
    shown = _one_at_a_time(lambda: preview_file(compiled, path, PREVIEW_LIMIT))  # a file's fault: in counts.error
    counts = shown.counts.as_dict()
    if counts["error"]:  # a message may name the file by its path: the administrator knows it by its name
        counts["error"] = counts["error"].replace(str(path), name)
    return JSONResponse({"file": name, "counts": counts, "records": shown.records,
                         "sheet": shown.sheet, "limit": PREVIEW_LIMIT})


# --------------------------------------------------------------------------- diff


async def diff(request: Request) -> Response:
    feed = _feed(request)
    text = _text(await _json_body(request))
    checked = await run_in_threadpool(check_mapping_text, text, feed.mapping.name)
    if checked.mapping is None:
        return _error(422, "the mapping has problems: fix them to see what it changes",
                      problems=[p.as_dict() for p in checked.problems])
    count = _console_settings(request).playground_files
    before, after = CompiledMapping(_in_force(request, feed)), CompiledMapping(checked.mapping)
    try:
        return await run_in_threadpool(_one_at_a_time, lambda: _diff_archived(feed, before, after, count))
    except _Busy:
        return _error(429, BUSY)


def _diff_archived(feed: FeedSettings, before: CompiledMapping, after: CompiledMapping, count: int) -> Response:
    # the last files fetched through the feed's inbox (local or SFTP) into a temporary folder, removed afterwards
    try:
        with last_archived_copies(feed, count) as files:
            if not files:
                return _error(409, f"feed {feed.name} has no archived files yet: preview an uploaded sample instead")
            result = diff_files(before, after, files, DEFAULT_SAMPLE)
    except PlaygroundError as exc:
        return _error(409, str(exc))
    for (name, path), shown in zip(files, result.files):  # a message names the file as the administrator knows it
        for side in (shown.before, shown.after):
            if side.error:
                side.error = side.error.replace(str(path), name)
    return JSONResponse(result.as_dict())


# --------------------------------------------------------------------------- save


async def save(request: Request) -> Response:
    feed = _feed(request)
    body = await _json_body(request)
    text, base_hash = _text(body), _text(body, "base_hash")
    versions = _console_settings(request).mapping_versions
    try:
        saved = await run_in_threadpool(save_mapping, feed, text, base_hash, versions)
    except MappingRefused as exc:
        return _error(422, "the mapping has problems; it was not saved", problems=[p.as_dict() for p in exc.problems])
    except (ConcurrentEdit, MappingSlotTaken) as exc:
        return _error(409, str(exc))
    except (PlaygroundError, OSError) as exc:
        return _error(500, f"the mapping was not saved: {exc}")
    log.info("mapping %s of feed %s saved by %s%s; the service loads it at its next reload", saved.path,
             feed.name, current_user(request), f" (the earlier one kept as {saved.kept})" if saved.kept else "")
    return JSONResponse({"saved": saved.path.name, "hash": saved.hash, "kept": saved.kept,
                         "versions": mapping_versions(feed, versions)})


# --------------------------------------------------------------------------- new from a sample


async def new_from_sample(request: Request) -> Response:
    feed = _feed(request)
    async with request.form(max_files=1, max_fields=10) as form:
        sample = form.get("sample")
        if not isinstance(sample, UploadFile) or not sample.filename:
            return _error(400, "choose a sample file: one export of the legacy system")
        data = await sample.read()
        name = os.path.basename(sample.filename)
        template_feed = form.get("template")
    try:  # one at a time too: a zip's directory of 400,000 names takes seconds and hundreds of MB to read
        detected = await run_in_threadpool(_one_at_a_time, lambda: detect_sample(data))
    except _Busy:
        return _error(429, BUSY)
    if isinstance(template_feed, str) and template_feed:
        try:
            template = _feed_named(request, template_feed)
        except HTTPException as exc:
            return _error(404, str(exc.detail))
        try:
            text = mapping_from_template(read_mapping(template).text, template.mapping.name, detected, feed.name, name)
        except (TemplateMismatch, PlaygroundError) as exc:
            return _error(422, str(exc), detected=detected.as_dict())
    else:
        text = proposed_mapping(detected, feed.name, name)
    checked = check_mapping_text(text, feed.mapping.name)
    return JSONResponse({"sample": name, "detected": detected.as_dict(), "text": text,
                         "problems": [p.as_dict() for p in checked.problems]})


routes: list[BaseRoute] = [
    Route("/", index, methods=["GET"]),
    Route("/feed/{feed}", editor, methods=["GET"]),
    Route("/feed/{feed}/version/{number:int}", version, methods=["GET"]),
    Route("/feed/{feed}/validate", validate, methods=["POST"]),
    Route("/feed/{feed}/preview", preview, methods=["POST"]),
    Route("/feed/{feed}/diff", diff, methods=["POST"]),
    Route("/feed/{feed}/save", save, methods=["POST"]),
    Route("/feed/{feed}/new", new_from_sample, methods=["POST"]),
]

__all__ = ["routes"]
