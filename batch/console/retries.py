"""Retry of failed events from the console: a retry request recorded in the journal with who asked
(batch.service.retrying.request_retry, the same as `retry`), then seen through in a thread of the
console (``await_requests``): a live instance that holds the feed carries it out, and when none
does the console takes the feed's lease and carries it out itself. The page reads the request
back from the journal (state, who, when, result) and refreshes itself until it is finished.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from batch.config.service import FeedNotFound, LoadedService
from batch.console.render import console_state, current_user
from batch.service.logs import installed_filter
from batch.service.retrying import FileResult, await_requests, request_retry
from batch.service.runtime import Runtime
from batch.store.journal import JournalMisuse, JournalStore, RetryRequest

#: The biggest id a journal holds (SQLite's and PostgreSQL's 64-bit integer): a path with a bigger
#: number is no file, not an error of the database driver (pages use it too).
MAX_FILE_ID = 2**63 - 1

log = logging.getLogger("batch.console")

#: How long a console thread sees a request through (the holder carries it out later otherwise).
WAIT_SECONDS = 900.0


#: How many problems of retry requests the console remembers (the oldest forgotten first): a
#: console that runs for months, or a flood of retry clicks, does not grow without end.
MAX_PROBLEMS = 1000


class Retries:
    """The console's threads that see its retry requests through; stopped with the console."""

    def __init__(self, max_problems: int = MAX_PROBLEMS) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.max_problems = max_problems
        #: request id -> why the console could not see it through (shown on the file page), at most
        #: max_problems, in the order they were noted
        self.problems: dict[int, str] = {}

    def note_problem(self, request_id: int, why: str) -> None:
        with self._lock:
            self.problems.pop(request_id, None)
            self.problems[request_id] = why
            while len(self.problems) > self.max_problems:
                del self.problems[next(iter(self.problems))]

    def start(self, loaded: LoadedService, ids: list[int]) -> None:
        thread = threading.Thread(target=self._see_through, args=(loaded, ids), daemon=True,
                                  name=f"console-retry-{'-'.join(map(str, ids))}")
        with self._lock:
            self._threads = [one for one in self._threads if one.is_alive()] + [thread]
        thread.start()

    def _see_through(self, loaded: LoadedService, ids: list[int]) -> None:
        try:
            with Runtime(loaded, stop=self._stop) as runtime:
                installed_filter().add_redactor(runtime.client.redact)  # the tokens it is issued
                awaited = await_requests(runtime, ids, timeout=WAIT_SECONDS)
            for request in awaited.waiting:
                why = awaited.refused.get(request.feed)
                if why:
                    self.note_problem(request.id, f"{why}; it stays queued for the instance that holds the feed next")
        except Exception as exc:  # noqa: BLE001 - shown on the page; the request stays queued
            text = installed_filter().redact(str(exc))
            log.warning("retry requests %s: %s", ids, text)
            for one in ids:
                self.note_problem(one, f"the console could not carry it out ({text}); it stays queued for the "
                                       "instance that holds the feed next")

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)


def retries_of(request: Request) -> Retries:
    retries: Retries = request.app.state.retries
    return retries


def requested_by(request: Request) -> str:
    return f"console:{current_user(request)}"


def retry_file(request: Request) -> Response:
    """POST: retry the failed events of one file (a request in the journal, seen through here)."""
    state = console_state(request)
    journal = _journal(state.journal())
    file_id = request.path_params["file_id"]
    try:
        if file_id > MAX_FILE_ID:  # beyond the journal's integers: no file (not a driver's overflow)
            raise JournalMisuse(f"no file #{file_id}")
        journal.get_file(file_id)
        ids = request_retry(journal, state.loaded.config, requested_by=requested_by(request), file_id=file_id)
    except JournalMisuse:
        raise HTTPException(404, f"no file #{file_id} in the journal") from None
    except FeedNotFound as exc:
        raise HTTPException(409, f"{exc}: nobody works its files any more") from None
    if not ids:
        return RedirectResponse(f"/files/{file_id}?retry=none#retry", status_code=303)
    retries_of(request).start(state.loaded, ids)
    return RedirectResponse(f"/files/{file_id}#retry", status_code=303)


def retry_feed(request: Request) -> Response:
    """POST: retry the failed events of every file of a feed (one request)."""
    state = console_state(request)
    journal = _journal(state.journal())
    feed = request.path_params["feed"]
    try:
        ids = request_retry(journal, state.loaded.config, requested_by=requested_by(request), feed=feed)
    except FeedNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    if ids:
        retries_of(request).start(state.loaded, ids)
    return RedirectResponse("/?retry=" + ("none" if not ids else "asked") + "#retries", status_code=303)


def _journal(journal: JournalStore | None) -> JournalStore:
    if journal is None:
        raise HTTPException(404, "no journal yet: nothing has been processed")
    return journal


def request_view(request: Request, retry: RetryRequest) -> dict[str, Any]:
    """What a page shows of a retry request: state, who and when, and each file's result."""
    problem = retries_of(request).problems.get(retry.id) if not retry.finished else None
    return {"request": retry, "files": [FileResult.from_json(one) for one in retry.files],
            "counts": {key: value for key, value in retry.counts.items() if value}, "problem": problem}


routes = [
    Route("/files/{file_id:int}/retry", retry_file, methods=["POST"]),
    Route("/feeds/{feed:str}/retry", retry_feed, methods=["POST"]),
]
