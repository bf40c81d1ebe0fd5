"""The console's pages: the feeds (last night at a glance) and a file (every record's fate), and
the downloads of a file's receipt, summary, rejected rows and original.

The feeds page shows what `status` shows, from the same functions (``feed_overview``,
``instances_overview``); the file page reads one page of the file's events at a time from the
journal (``events_page``), whatever the file's size.
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from batch.config.inbox import LocalLocation
from batch.config.service import FeedSettings, LoadedService
from batch.console.mapping_store import ArchiveNotAvailable, PlaygroundError, original_copy
from batch.console.render import console_state, render
from batch.console.retries import MAX_FILE_ID, request_view
from batch.console.security import Refused, confined
from batch.inbox.local import local_outbox
from batch.service.supervisor import feed_overview, instances_overview
from batch.store.journal import OUTCOMES, FileRecord, JournalMisuse, JournalStore
from batch.store.receipts import receipt_names
from batch.store.rejected import archived_original

PAGE_SIZE = 100
#: The folders of a local feed a download may come from (the inbox's own names in its settings).
FOLDERS = ("outbox", "archive", "error")
#: How far back the feeds page lists files, in days (?days= changes it, up to MAX_DAYS).
DEFAULT_DAYS = 1
MAX_DAYS = 31
MAX_RECENT_FILES = 500


def _journal(request: Request) -> JournalStore | None:
    return console_state(request).journal()


# --------------------------------------------------------------------------- feeds


def feeds_page(request: Request) -> Response:
    state = console_state(request)
    loaded = state.loaded
    journal = state.journal()
    leases = state.leases()
    days = _int_param(request, "days", DEFAULT_DAYS, 1, MAX_DAYS)
    rows = feed_overview(loaded, journal, leases)
    instances = {row["instance"]: row for row in instances_overview(leases, loaded.config.lease_seconds)} \
        if leases is not None else {}
    failed = journal.failed_by_feed() if journal is not None else {}
    since = datetime.now(timezone.utc) - timedelta(days=days)
    recent = journal.files_since(since, MAX_RECENT_FILES) if journal is not None else []
    feeds = []
    for row in rows:
        name = row["feed"]
        files = [record for record in recent if record.feed == name]
        last = files[0] if files else None
        if last is None and row.get("last_file") and journal is not None:
            older = journal.recent_files(1, name)  # the last file is older than the window
            last = older[0] if older else None
        feeds.append(feed_view(row, last, files, failed.get(name, 0), instances))
    retry_requests = [request_view(request, one) for one in journal.retry_requests(limit=5)] \
        if journal is not None else []
    return render(request, "feeds.html", {
        "retries": retry_requests, "retry_running": any(not one["request"].finished for one in retry_requests),
        "retry_none": request.query_params.get("retry") == "none",
        "feeds": feeds, "files": recent, "days": days, "journal": state.journal_display, "no_journal": journal is None,
        "instances": list(instances.values()), "outcomes": OUTCOMES, "nav": "feeds"})


def feed_view(row: dict[str, Any], last: FileRecord | None, files: list[FileRecord], failed: int,
              instances: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the feeds page shows of one feed (from a row of ``feed_overview``)."""
    lease = row.get("lease")
    holder = instances.get(lease["holder"]) if lease else None
    expected = row.get("expected")  # the late branch's schedule (None: the feed declares none)
    late = bool(expected and expected.get("late"))
    marker = row.get("marker")
    if row.get("error"):
        state, tone = f"inbox unreachable: {row['error']}", "bad"
    elif late and expected is not None:
        state, tone = "late: no file arrived for " + str(expected.get("due") or "its due time"), "bad"
    elif lease and lease["live"]:
        state, tone = f"worked by {lease['holder']}", "good"
    elif marker and marker.get("foreign") and marker.get("live"):
        state, tone = f"worked by {marker['instance']} (another journal)", "warn"
    else:
        state, tone = "no instance holds it", "idle"
    return {
        "name": row["feed"], "inbox": row["inbox"], "state": state, "tone": tone, "late": late,
        "expected": expected, "lease": lease, "holder": holder, "marker": marker,
        "in_processing": row.get("in_processing") or [], "last": last, "files": files, "failed": failed,
    }


# --------------------------------------------------------------------------- a file


@dataclass(frozen=True)
class Pager:
    page: int
    pages: int
    total: int
    size: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size


def file_page(request: Request) -> Response:
    journal = _journal(request)
    if journal is None:
        raise HTTPException(404, "no journal yet: nothing has been processed")
    record = _file_record(journal, request.path_params["file_id"])
    outcome = request.query_params.get("outcome") or ""
    if outcome and outcome not in OUTCOMES:
        raise HTTPException(400, f"no outcome {outcome!r} (outcomes: {', '.join(OUTCOMES)})")
    search = (request.query_params.get("q") or "").strip()
    states = (outcome,) if outcome else ()
    if search:
        total = journal.count_events(record.id, states=states, search=search)
    else:  # the file's counts are kept per outcome: no count over 100,000 rows
        total = record.counts.get(outcome, 0) if outcome else sum(record.counts.values())
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = _int_param(request, "page", 1, 1, pages)
    pager = Pager(page, pages, total, PAGE_SIZE)
    events = journal.events_page(record.id, states=states, search=search or None, offset=pager.offset,
                                 limit=PAGE_SIZE)
    loaded = console_state(request).loaded
    settings = _feed_settings(loaded, record.feed)
    retry_requests = [request_view(request, one) for one in journal.retry_requests(file_id=record.id, limit=5)]
    return render(request, "file.html", {
        "retries": retry_requests, "retry_running": any(not one["request"].finished for one in retry_requests),
        "retry_none": request.query_params.get("retry") == "none",
        "file": record, "events": events, "outcome": outcome, "search": search, "pager": pager,
        "outcomes": OUTCOMES, "downloads": downloads(settings, record) if settings else [],
        "local": settings is not None and isinstance(settings.location, LocalLocation),
        "feed_known": settings is not None, "link": _page_link(record.id, outcome, search),
        "nav": "feeds"})


def _page_link(file_id: int, outcome: str, search: str) -> Any:
    def link(page: int | None = None, **changes: str) -> str:
        query = {"outcome": outcome, "q": search, **changes}
        if page is not None and page > 1:
            query["page"] = str(page)
        kept = {key: value for key, value in query.items() if value}
        return f"/files/{file_id}" + (f"?{urlencode(kept)}" if kept else "")
    return link


def downloads(settings: FeedSettings, record: FileRecord) -> list[dict[str, Any]]:
    """The files of `record` a local feed's folders hold: receipt, summary, rejected rows,
    original; of an SFTP feed the original (fetched from its server's archive; its receipts are
    on its server)."""
    outbox = local_outbox(settings)
    if outbox is None:
        return [{"kind": "original", "label": "Original", "available": True, "url": f"/files/{record.id}/original"}]
    names = receipt_names(record.name)
    summary = receipt_summary(Path(outbox), record)
    found = []
    if summary is not None:
        found += [{"kind": "receipt", "label": "Receipt (CSV)", "available": (Path(outbox) / names.csv).is_file()},
                  {"kind": "summary", "label": "Summary (JSON)", "available": True}]
        if rejected_rows(summary):
            found.append({"kind": "rejected", "label": "Rejected rows", "available": True})
    # offered without looking: finding it means hashing the archive's candidates (the download does)
    found.append({"kind": "original", "label": "Original", "available": True})
    for entry in found:
        entry["url"] = f"/files/{record.id}/{entry['kind']}"
    return found


def receipt_summary(outbox: Path, record: FileRecord) -> dict[str, Any] | None:
    """The receipt summary (JSON) of `record` in the outbox; None when there is none, or when the
    one there is of another file of the same name (a later drop replaced it)."""
    try:
        document = json.loads(confined(outbox, receipt_names(record.name).json).read_text(encoding="utf-8"))
        started = datetime.fromisoformat(document["started"])
    except (Refused, OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(document, dict) or document.get("sha256") != record.sha256 or started != record.started_at:
        return None
    return document


def rejected_rows(summary: dict[str, Any]) -> str | None:
    name = summary.get("rejected_rows")
    return name if isinstance(name, str) and name else None


def file_download(request: Request) -> Response:
    """A file's receipt, summary, rejected rows or original, from its local feed's folders."""
    journal = _journal(request)
    if journal is None:
        raise HTTPException(404, "no journal yet")
    record = _file_record(journal, request.path_params["file_id"])
    kind = request.path_params["kind"]
    settings = _feed_settings(console_state(request).loaded, record.feed)
    if settings is not None and kind == "original" and not isinstance(settings.location, LocalLocation):
        return _fetched_original(settings, record)
    if settings is None or not isinstance(settings.location, LocalLocation):
        raise HTTPException(404, "this feed's files are on its SFTP server, not here")
    if kind == "original":
        original = archived_original(settings, record.name, record.size, record.sha256)
        if original is None:
            raise HTTPException(404, f"{record.name} is not in the feed's archive/ (moved, or not finished)")
        return _send(_folder(settings, "archive"), original.name)
    if kind not in ("receipt", "summary", "rejected"):
        raise HTTPException(404, f"no download {kind!r}")
    outbox = _folder(settings, "outbox")
    summary = receipt_summary(outbox, record)
    if summary is None:
        raise HTTPException(404, f"the outbox holds no receipt of this {record.name} (none, or a later file's of "
                                 "the same name)")
    names = receipt_names(record.name)
    if kind == "receipt":
        return _send(outbox, names.csv)
    if kind == "summary":
        return _send(outbox, names.json)
    name = rejected_rows(summary)
    if name is None:
        raise HTTPException(404, "this file has no rejected-rows file")
    return _send(outbox, name)


def folder_download(request: Request) -> Response:
    """A file of a local feed's outbox/, archive/ or error/ by its name (the feeds page links
    to them); confined to that folder."""
    settings = _feed_settings(console_state(request).loaded, request.path_params["feed"])
    if settings is None:
        raise HTTPException(404, "no such feed")
    folder = request.path_params["folder"]
    if folder not in FOLDERS or not isinstance(settings.location, LocalLocation):
        raise HTTPException(404, "no such folder")
    return _send(_folder(settings, folder), request.path_params["name"])


def _folder(settings: FeedSettings, which: str) -> Path:
    location = settings.location
    assert isinstance(location, LocalLocation)
    name = {"outbox": settings.outbox_dir, "archive": settings.archive_dir, "error": settings.error_dir}[which]
    path = Path(name)
    return path if path.is_absolute() else location.path / path


def _send(folder: Path, name: str) -> Response:
    try:
        path = confined(folder, name)
    except Refused as exc:
        raise HTTPException(404, f"{name!r}: {exc}") from None
    return FileResponse(path, filename=path.name, media_type=_media_type(path.name),
                        headers={"Cache-Control": "no-store"})


#: SFTP originals fetched at once (each up to 256 MB of the temporary folder and a worker thread
#: while it downloads); another one meanwhile is refused (429), not queued.
_FETCHES = threading.Semaphore(2)
FETCHES_BUSY = ("two originals are being downloaded from SFTP servers already (at most two at a time on this "
                "console): try again when one has finished")


def _fetched_original(settings: FeedSettings, record: FileRecord) -> Response:
    """The original of `record` from an SFTP feed's archive: downloaded through the feed's inbox
    into a temporary folder (at most ARCHIVE_MAX_BYTES, hashed as it comes), opened, and the folder
    removed before the response starts: the client is sent the open file, and nothing stays on
    this disk whether the client reads it all or goes away."""
    if not _FETCHES.acquire(blocking=False):
        raise HTTPException(429, FETCHES_BUSY)
    try:
        return _fetch_original(settings, record)
    finally:
        _FETCHES.release()


def _fetch_original(settings: FeedSettings, record: FileRecord) -> Response:
    with tempfile.TemporaryDirectory(prefix="usageplace-console-") as staging:
        try:
            with original_copy(settings, record.name, record.size, record.sha256, Path(staging)) as copy:
                if copy is None:
                    raise HTTPException(404, f"{record.name} is not in the feed's archive/ (moved, or not finished)")
                name = copy.name
                stream = open(copy, "rb")  # noqa: SIM115 - closed by _chunks, after the folder is gone
        except ArchiveNotAvailable as exc:
            raise HTTPException(503, str(exc)) from None
        except PlaygroundError as exc:
            raise HTTPException(404, str(exc)) from None
    quoted = quote(name)
    disposition = (f"attachment; filename*=utf-8''{quoted}" if quoted != name  # as FileResponse writes it
                   else f'attachment; filename="{name}"')
    return StreamingResponse(_chunks(stream), media_type=_media_type(name), headers={
        "Content-Disposition": disposition, "Content-Length": str(record.size), "Cache-Control": "no-store"})


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    with stream:
        while block := stream.read(1 << 20):
            yield block


def _media_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name.endswith(".csv"):
        return "text/csv"
    return "application/octet-stream"


# --------------------------------------------------------------------------- helpers


def _file_record(journal: JournalStore, file_id: int) -> FileRecord:
    if file_id > MAX_FILE_ID:
        raise HTTPException(404, f"no file #{file_id} in the journal")
    try:
        return journal.get_file(file_id)
    except JournalMisuse:
        raise HTTPException(404, f"no file #{file_id} in the journal") from None


def _feed_settings(loaded: LoadedService, name: str) -> FeedSettings | None:
    for feed in loaded.config.feeds:
        if feed.name == name:
            return feed
    return None


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query_params.get(key) or default)
    except ValueError:
        raise HTTPException(400, f"{key} must be a number") from None
    return min(max(value, low), high)


routes = [
    Route("/", feeds_page, methods=["GET"]),
    Route("/files/{file_id:int}", file_page, methods=["GET"]),
    Route("/files/{file_id:int}/{kind:str}", file_download, methods=["GET"]),
    Route("/feeds/{feed:str}/{folder:str}/{name:path}", folder_download, methods=["GET"]),
]

__all__ = ["feeds_page", "file_page", "routes"]
