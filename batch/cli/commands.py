"""The `usageplace-batch` command: argument parsing, printing and exit codes — nothing else.

Exit codes (batch.errors.ExitStatus): 0 all good; 1 the command ran but found problems (invalid
records, invalid mappings, events not accepted); 2 it could not run (unusable file, mapping or
configuration, credentials refused, inbox or storage unavailable); 3 an internal error (a bug).
`BoundaryGroup` is the one place that turns an exception into a message and an exit status.
"""

from __future__ import annotations

import json
import logging
import signal
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from batch import __version__
from batch.errors import BatchError, ConfigurationError, ExitStatus, InputFileError
from batch.fsutil import file_kind
from batch.redact import escape_unprintable
from batch.service.logs import (
    installed_filter,
    print_redacted_traceback,
    redact_config_secrets,
    setup_logging,
)

if TYPE_CHECKING:  # the CLI imports its parts when a command runs, so that --help stays fast
    from rich.progress import Progress as Bar, TaskID

    from batch.config.mapping import Mapping
    from batch.config.service import LoadedService
    from batch.pipeline import FileOutcome, Progress
    from batch.sandbox.server import Sandbox
    from batch.service.holding import FeedBusy
    from batch.service.runtime import Runtime
    from batch.store.journal import FileRecord, JournalStore, RetryRequest
    from batch.store.leases import LeaseStore
    from batch.transform.mapping import MappedRecord

log = logging.getLogger("batch.cli.commands")


class BoundaryGroup(click.Group):
    """The one error boundary: users see a sentence, never a traceback, unless --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            raise SystemExit(130) from None
        except Exception as exc:  # noqa: BLE001 - this is the boundary
            raise SystemExit(_report_error(exc, debug=bool(ctx.obj and ctx.obj.get("debug")))) from None


def exit_status_of(exc: BaseException) -> ExitStatus:
    """The exit status an exception that reached the boundary calls for: a BatchError says its
    own (batch.errors); an OSError is the machine refusing (a folder, a port): could not run;
    anything else is a bug."""
    if isinstance(exc, BatchError):
        return exc.exit_status
    if isinstance(exc, OSError):
        return ExitStatus.UNUSABLE
    return ExitStatus.INTERNAL


def _report_error(exc: Exception, debug: bool) -> ExitStatus:
    """Print what went wrong (a traceback too with --debug); the exit status it calls for."""
    status = exit_status_of(exc)
    if debug:
        print_redacted_traceback()
    if status == ExitStatus.INTERNAL:
        text = str(exc) or type(exc).__name__
        hint = "" if debug else " (run with --debug for the traceback)"
        _echo(f"internal error: {type(exc).__name__}: {text}; please report it{hint}", err=True)
    elif isinstance(exc, BatchError):
        _echo(f"error: {exc}", err=True)
    elif not debug:
        _echo(f"error: {exc} (run with --debug for details)", err=True)
    return status


# --- what reaches a terminal ------------------------------------------------------------------------


def terminal_safe(text: object, keep_newlines: bool = False) -> str:
    """`text` with every character a terminal could act on written as an escape ('\\x1b', '\\x9b',
    '\\u202e'): C0 and C1 controls, DEL, line/paragraph separators and format characters such as
    bidi overrides. Record values and file names come from uploaders; an ESC in them must not
    clear the administrator's screen or retitle the window. The rule is the log lines' one
    (:func:`batch.redact.escape_unprintable`)."""
    return escape_unprintable(str(text), "\n" if keep_newlines else "")


def terminal_json(document: Any) -> str:
    """One JSON line whose strings hold no character a terminal acts on (JSON escapes C0 only)."""
    text = json.dumps(document, ensure_ascii=False)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _json_escape(char) for char in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _echo(text: object, err: bool = False) -> None:
    """click.echo of our own (possibly multi-line) text that carries values from files."""
    # the same redaction as the log lines: an error's text may carry a secret it was handed
    click.echo(terminal_safe(installed_filter().redact(str(text)), keep_newlines=True), err=err)


def _regular_file(path: Path, error: type[BatchError] = InputFileError) -> Path:
    """An input path, refused (exit 2) unless it names a regular file: opening a FIFO blocks
    forever, /dev/zero never ends, a directory is not an export. Symlinks are followed."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise error(f"{path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(_not_regular(path, mode))
    return path


def _refuse_special(path: Path) -> None:
    """Like _regular_file for a path whose absence its loader explains (configuration files)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        raise ConfigurationError(_not_regular(path, mode))


def _not_regular(path: Path, mode: int) -> str:
    return f"{path}: not a regular file ({file_kind(mode)}); give the path of a file"


@click.group(cls=BoundaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.version_option(__version__, prog_name="usageplace-batch")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Map legacy CSV/XML exports to Ropo One usage place events, deliver them, and write receipts."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    setup_logging(logging.DEBUG if debug else logging.WARNING)  # every command logs through the redaction


# --- mappings ------------------------------------------------------------------------------------


@main.command()
@click.argument("mappings", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(mappings: tuple[Path, ...]) -> None:
    """Check mapping files; print every problem with its file, line and key."""
    from batch.config.mapping import load_mapping
    from batch.config.yamlload import ConfigError

    failed = 0
    for path in mappings:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = stat.S_IFREG  # load_mapping says what is wrong
        if not stat.S_ISREG(mode):
            failed += 1
            _echo(_not_regular(path, mode), err=True)
            continue
        try:
            mapping = load_mapping(path)
        except ConfigError as exc:
            failed += 1
            for problem in exc.problems:
                _echo(problem, err=True)
            continue
        except Exception as exc:  # noqa: BLE001 - one file's surprise never hides the other files' problems
            failed += 1
            _echo(f"{path}: cannot be checked: {type(exc).__name__}: {exc}", err=True)
            continue
        _echo(f"{path}: ok ({mapping.format}, {len(_mapped_fields(mapping))} fields)")
    if failed:
        click.echo(f"{failed} of {len(mappings)} mapping file(s) have problems", err=True)
        raise SystemExit(ExitStatus.PROBLEMS)


def _mapped_fields(mapping: Mapping) -> list[str]:
    return [name for name, value in mapping.fields if value is not None]


@main.command()
@click.argument("mapping", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), help="Show at most N records.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.option("--errors-only", is_flag=True, help="Show only the records that are invalid.")
def preview(mapping: Path, file: Path, limit: int | None, as_json: bool, errors_only: bool) -> None:
    """Show the events that MAPPING makes of FILE, and why any record is invalid. Sends nothing."""
    from batch.config.mapping import load_mapping
    from batch.config.yamlload import ConfigError
    from batch.transform.extract import mapped_file
    from batch.transform.mapping import CompiledMapping
    from batch.transform.readers import FileError

    _regular_file(mapping, ConfigurationError)
    _regular_file(file)
    try:
        compiled = CompiledMapping(load_mapping(mapping))
    except ConfigError as exc:
        raise ConfigurationError(f"the mapping cannot be used:\n{exc}") from None
    counts = {"valid": 0, "invalid": 0}
    shown = 0
    printer = _JsonPrinter() if as_json else _TablePrinter(file)
    _open_input(file).close()  # a clear message for a missing or unreadable file
    run = compiled.start()
    try:
        for records in mapped_file(compiled, file, run=run):
            for record in records:
                counts["valid" if record.ok else "invalid"] += 1
                if (limit is None or shown < limit) and not (errors_only and record.ok):
                    printer.record(record, run.sheet)
                    shown += 1
    except FileError as exc:
        printer.flush()
        raise InputFileError(f"{file}: {exc}") from None
    printer.flush()
    total = counts["valid"] + counts["invalid"]
    filtered = f", {run.filtered} filtered out (keep)" if compiled.keep is not None else ""
    _echo(f"{file}: {total} records, {counts['valid']} valid, {counts['invalid']} invalid{filtered}", err=True)
    if counts["invalid"]:
        raise SystemExit(ExitStatus.PROBLEMS)


def _open_input(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputFileError(f"{path}: {exc.strerror}") from None


class _JsonPrinter:
    def record(self, record: MappedRecord, sheet: str | None = None) -> None:
        """`record` is the line (a workbook's row number; `sheet` then names its sheet)."""
        where: dict[str, Any] = {"record": record.line} if sheet is None else {"record": record.line, "sheet": sheet}
        if record.ok:
            payload = {**where, "event": record.event}
        else:
            payload = {**where, "errors": [error.as_dict() for error in record.errors]}
        click.echo(terminal_json(payload))

    def flush(self) -> None:
        pass


class _TablePrinter:
    """A readable table; buffered per 200 rows so that long files start printing at once."""

    def __init__(self, file: Path):
        from rich.console import Console

        # piped output is read in files and terminals wider than 80 columns
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        self.file = file
        self.rows: list[MappedRecord] = []
        self.sheet: str | None = None  # a workbook's: the table's first column is then its rows

    def record(self, record: MappedRecord, sheet: str | None = None) -> None:
        self.sheet = sheet
        self.rows.append(record)
        if len(self.rows) >= 200:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        from rich.table import Table

        # a workbook's rows: "row" numbers on the sheet the title names, as Excel shows them
        title = None if self.sheet is None else f"sheet {_escape(repr(self.sheet))}"
        table = Table(show_lines=False, header_style="bold", title=title)
        for name in ("line" if self.sheet is None else "row", "id", "usageplacecode", "time", "status"):
            table.add_column(name, no_wrap=True)
        table.add_column("invoices", overflow="fold", max_width=30)
        table.add_column("description / problem", overflow="fold", ratio=1)
        for record in self.rows:
            event = record.event
            if event is not None:  # a valid record
                invoices = ", ".join(
                    f"{i.get('invoicenumber', '?')}/{i.get('jobid', '-')}" for i in event.get("invoices", [])
                )
                cells = (event.get(key, "") for key in ("id", "usageplacecode", "time", "status"))
                # values come from the file: '[/x]' in a description is text, not rich markup
                table.add_row(
                    str(record.line), *(_escape(cell) for cell in cells), _escape(invoices),
                    _escape(event.get("description", "")),
                )
            else:
                partial = record.partial
                problems = "\n".join(error.describe() for error in record.errors)
                table.add_row(
                    str(record.line), _escape(partial.get("id", "")), _escape(partial.get("usageplacecode", "")), "",
                    "[red]invalid[/red]", "", f"[red]{_escape(problems)}[/red]",
                )
        self.console.print(table)
        self.rows = []


def _escape(text: str) -> str:
    """A table cell: terminal controls escaped, and '[/x]' text rather than rich markup."""
    from rich.markup import escape

    return escape(terminal_safe(text, keep_newlines=True))


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write to a file.")
def schema(output: Path | None) -> None:
    """Print the JSON Schema of mapping files (for editors such as VS Code's YAML extension)."""
    from batch.config.mapping import mapping_json_schema

    text = json.dumps(mapping_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


# --- delivery ---------------------------------------------------------------------------------------

CONFIG_OPTION = click.option(
    "--config", "-c", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="The service configuration (see config/service.yaml).",
)


def _load_service(path: Path) -> LoadedService:
    from batch.config.service import load_service_config
    from batch.config.yamlload import ConfigError

    _refuse_special(path)
    try:
        loaded = load_service_config(path)
    except ConfigError as exc:
        raise ConfigurationError(f"the configuration cannot be used:\n{exc}") from None
    redact_config_secrets(loaded.config)
    return loaded


def _open_runtime(path: Path) -> Runtime:
    from batch.service.runtime import Runtime

    runtime = Runtime(_load_service(path))
    installed_filter().add_redactor(runtime.client.redact)  # the tokens it is issued
    return runtime


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@CONFIG_OPTION
@click.option("--feed", help="The feed the file belongs to (default: the one whose patterns match).")
@click.option("--receipts", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the receipt (default: the feed's outbox, else beside FILE).")
@click.option("--force", is_flag=True, help="Process even if the same content was processed before.")
def process(file: Path, config_path: Path, feed: str | None, receipts: Path | None, force: bool) -> None:
    """Process one FILE end to end: map, journal, deliver, receipt.

    Works under the feed's lease, as an instance of the service would: refused while a running
    instance holds the feed (drop the file into the feed's inbox instead, or stop that instance).

    Exit 0: every record accepted; 1: some were not (invalid, rejected, failed) or the file was
    already processed; 2: it could not run (unusable file or configuration, credentials refused,
    the feed worked by a running instance).
    """
    from batch.inbox.local import local_outbox
    from batch.service.holding import CommandLeases, FeedBusy

    _regular_file(file)
    with _open_runtime(config_path) as runtime:
        settings = runtime.feed_for(file.name, feed)
        receipt_dir = receipts or local_outbox(settings) or file.parent
        receipt_dir.mkdir(parents=True, exist_ok=True)
        leases = CommandLeases(runtime, "process")
        try:
            with leases.hold(settings.name) as held, _progress() as progress:
                outcome = held.processor.process(
                    file, runtime.feeds[settings.name], receipt_dir, force=force, progress=progress
                )
        except FeedBusy as busy:
            _echo(f"error: {_process_refused(busy, file, settings.inbox)}", err=True)
            raise SystemExit(ExitStatus.UNUSABLE) from None
        finally:
            leases.close()
        _report_outcome(file.name, outcome)
    raise SystemExit(outcome.exit_status)


def _process_refused(busy: FeedBusy, file: Path, inbox: str) -> str:
    """Why `process` does not run now (batch.service.holding.FeedBusy), and what to do."""
    if busy.holder is None:
        return str(busy)
    return (f"feed {busy.feed} is worked by instance {busy.holder}, which holds its lease: drop {file.name} into "
            f"the feed's inbox ({inbox}) and that instance processes it, or stop that instance and run process "
            "again")


@main.command()
@CONFIG_OPTION
@click.option("--file-id", type=int,
              help="Only this file (an id from `status`); default: every file with failed events.")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for a running instance that holds the feed to carry the retry out; "
                   "the request stays queued after that.")
def retry(config_path: Path, file_id: int | None, timeout: float) -> None:
    """Send failed events again (those whose transient errors outlasted the retries).

    Records a retry request per file in the journal. A running instance that holds the file's
    feed carries it out (this waits for it and prints the result); when none does, this command
    takes the feed's lease and carries it out itself.
    """
    from batch.service.retrying import await_requests, request_retry, user_at_host

    with _open_runtime(config_path) as runtime:
        ids = request_retry(runtime.journal, runtime.config, requested_by=f"cli:{user_at_host()}", file_id=file_id)
        if not ids:
            click.echo("no failed events to retry", err=True)
            return
        worst = ExitStatus.OK

        def finished(request: RetryRequest) -> None:
            nonlocal worst
            worst = max(worst, _report_request(request))

        def waiting(feed: str, holder: str) -> None:
            _echo(f"feed {feed}: instance {holder} holds the feed's lease and sends its failed events again; "
                  "waiting for it", err=True)

        awaited = await_requests(runtime, ids, timeout=timeout, progress=_progress, on_finished=finished,
                                 on_wait=waiting)
        for request in awaited.waiting:
            worst = ExitStatus.UNUSABLE
            which = f"file #{request.file_id}" if request.file_id is not None else "every file"
            if request.feed in awaited.refused:
                why = (f"{awaited.refused[request.feed]}; it stays queued for the instance that holds the feed "
                       "next (or run retry again)")
            else:
                holder = awaited.holders.get(request.feed, "the instance that holds the feed")
                why = (f"{holder} has not carried it out within {timeout:g} s; it stays queued and {holder} "
                       "carries it out when it gets to it")
            _echo(f"retry request #{request.id} ({which} of feed {request.feed}) is still {request.state}: {why}",
                  err=True)
    raise SystemExit(worst)


def _report_request(request: RetryRequest) -> ExitStatus:
    """The lines of a finished retry request (one per file, as `process` prints a file); the
    exit status it calls for."""
    from batch.service.retrying import FileResult

    results = [FileResult.from_json(one) for one in request.files]
    for result in results:
        for note in result.notes:
            _echo(f"  {note}", err=True)
        _report_file(result.name, result.status, result.counts, result.message, result.receipt,
                     result.rejected_rows)
    worst = max((ExitStatus(result.exit_status) for result in results), default=ExitStatus.OK)
    if request.state == "failed" and worst < ExitStatus.UNUSABLE:  # no file's line says why
        _echo(f"retry request #{request.id}: failed: {request.message}", err=True)
        worst = ExitStatus.UNUSABLE
    return worst


@main.command()
@CONFIG_OPTION
@click.option("--older-than-days", type=click.FloatRange(min=0, min_open=True),
              help="Default: the configuration's journal_retention_days.")
def prune(config_path: Path, older_than_days: float | None) -> None:
    """Forget files that finished long ago, and their events (the service does this itself)."""
    from batch.service.supervisor import prune_journal
    from batch.store.journals import journal_display, open_journal

    loaded = _load_service(config_path)
    days = older_than_days or loaded.config.journal_retention_days
    if days is None:
        click.echo("journal_retention_days is null (keep everything): give --older-than-days", err=True)
        raise SystemExit(ExitStatus.PROBLEMS)
    journal = open_journal(loaded.config, create=False)
    if journal is None:
        click.echo(f"no journal yet at {journal_display(loaded.config.journal)}: nothing to prune", err=True)
        return
    with journal:
        files, events = prune_journal(journal, days)
    click.echo(f"forgot {files} file(s) and {events} event(s) finished more than {days:g} days ago")


@main.command()
@CONFIG_OPTION
@click.option("--feed", "feed_name", required=True, help="The feed to hand over.")
def handover(config_path: Path, feed_name: str) -> None:
    """Hand a feed over to this journal's instances: removes the inbox's lease marker of an
    instance with another journal whose lease has expired (refused while it is live)."""
    from batch.service.leasing import hand_over
    from batch.store.journals import open_journal
    from batch.store.leases import open_lease_store

    loaded = _load_service(config_path)
    settings = loaded.config.feed(feed_name)  # a misspelt name: FeedNotFound names the known feeds
    journal = open_journal(loaded.config)  # the journal whose identity the marker is compared with
    if journal is not None:
        journal.close()
    leases = open_lease_store(loaded.config.journal, loaded.config.journal_password_file)
    try:
        click.echo(terminal_safe(hand_over(settings, leases.journal_id)))
    finally:
        leases.close()


@main.command()
@CONFIG_OPTION
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="How many files.")
@click.option("--feed", help="Only this feed.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line: each file ("kind": "file"), then each feed with its lease '
                   '("kind": "feed"), then each instance seen in the last hour ("kind": "instance").')
def status(config_path: Path, limit: int, feed: str | None, as_json: bool) -> None:
    """Recent files with their counts per outcome, from the journal; the feeds with their leases
    (holder, epoch, expiry), the inbox's lease marker, and the instances seen recently.

    Only reads: the journal is opened read-only (a read-only disk, a copy being inspected)."""
    from batch.service.supervisor import feed_overview, instances_overview
    from batch.store.journal import JournalError
    from batch.store.journals import journal_display, open_journal
    from batch.store.leases import open_lease_store

    loaded = _load_service(config_path)
    if feed is not None:
        loaded.config.feed(feed)  # a removed or misspelt name: FeedNotFound names the known feeds
    journal = open_journal(loaded.config, read_only=True)
    if journal is None:
        click.echo(f"no journal yet at {journal_display(loaded.config.journal)}: nothing has been processed",
                   err=True)
        if as_json:
            for row in feed_overview(loaded, None):
                if feed is None or row["feed"] == feed:
                    click.echo(terminal_json({"kind": "feed", **row, "lease": None, "marker": None}))
        else:
            _print_feeds(loaded, None, feed)
        return
    with journal:
        files = journal.recent_files(limit, feed)
        leases: LeaseStore | None
        try:  # the lease store writes its tables when it opens: not on a read-only journal
            leases = open_lease_store(loaded.config.journal, loaded.config.journal_password_file)
        except JournalError as exc:
            leases = None
            click.echo(terminal_safe(f"note: leases and instances not shown: {exc}"), err=True)
        try:
            if as_json:
                for record in files:
                    click.echo(terminal_json(_file_summary(record)))
                for row in feed_overview(loaded, journal, leases):
                    if feed is None or row["feed"] == feed:
                        click.echo(terminal_json({"kind": "feed", **row}))
                if leases is not None:
                    for row in instances_overview(leases, loaded.config.lease_seconds):
                        click.echo(terminal_json({"kind": "instance", **row}))
                return
            _print_feeds(loaded, journal, feed, leases)
            if leases is not None:
                _print_instances(loaded, leases)
        finally:
            if leases is not None:
                leases.close()
    from rich.console import Console
    from rich.table import Table

    table = Table(header_style="bold")
    for name in ("id", "feed", "file", "state", "started (UTC)", "accepted", "rejected", "invalid", "failed",
                 "duplicate", "not_sent", "pending", "filtered"):
        table.add_column(name, no_wrap=name != "file")
    for record in files:
        counts = record.counts
        table.add_row(
            str(record.id), _escape(record.feed), _escape(record.name), _escape(record.state),
            record.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            *(str(counts.get(key, 0)) for key in ("accepted", "rejected", "invalid", "failed", "duplicate", "not_sent",
                                                  "pending")), str(record.filtered),
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


def _file_summary(record: FileRecord) -> dict[str, Any]:
    return {
        "kind": "file", "id": record.id, "feed": record.feed, "file": record.name, "state": record.state,
        "sha256": record.sha256, "started": record.started_at.isoformat(),
        "finished": record.finished_at.isoformat() if record.finished_at else None,
        "counts": {**record.counts, "filtered": record.filtered}, "error": record.error,
        "mapping_version": record.mapping_version, "finish_problem": record.finish_problem, "note": record.note,
    }


def _report_outcome(name: str, outcome: FileOutcome, published: list[str] | None = None) -> None:
    """One line for the file; then where its receipt is (`published`: where Inbox.publish_receipt
    put each of its files, in ReceiptPaths.files order; else where it was written)."""
    counts = {**outcome.counts, "filtered": outcome.file.filtered if outcome.file else 0}
    receipt = outcome.receipt
    csv = rejected = None
    if receipt is not None:
        where = dict(zip(receipt.files, published)) if published is not None else {}
        csv = where.get(receipt.csv, receipt.csv)
        rejected = None if receipt.rejected is None else where.get(receipt.rejected, receipt.rejected)
    _report_file(name, outcome.status, counts, outcome.message, csv, rejected)


def _report_file(name: str, status: str, counts: dict[str, int], message: str | None, receipt: object | None,
                 rejected: object | None) -> None:
    """One line for a processed (or retried) file, then where its receipt and rejected rows are."""
    from batch.pipeline import FileStatus
    from batch.service.retrying import NOTHING_LEFT

    shown = ", ".join(f"{counts[key]} {key}" for key in ("accepted", "rejected", "invalid", "failed", "duplicate",
                                                         "not_sent", "pending", "filtered") if counts.get(key))
    if status == FileStatus.DONE:
        _echo(f"{name}: {shown or 'no records'}")
    elif status in (FileStatus.SKIPPED, NOTHING_LEFT):
        _echo(f"{name}: not sent: {message}")
    elif status == FileStatus.ERROR:
        _echo(f"{name}: the file cannot be used: {message}", err=True)
    elif status == FileStatus.AUTH_FAILED:
        _echo(f"{name}: cannot deliver to Ropo One: {message} ({shown}; rerun to continue)", err=True)
    else:
        _echo(f"{name}: interrupted ({shown}); rerun to continue where it stopped", err=True)
    if receipt is not None:
        _echo(f"  receipt: {receipt}")
        if rejected is not None:
            _echo(f"  rejected rows (fix them and drop this file again): {rejected}")


class _progress:
    """A rich progress bar on a terminal; silent otherwise (cron, pipes, tests)."""

    bar: Bar | None = None

    def __enter__(self) -> Progress:
        from batch.pipeline import Progress

        if not sys.stderr.isatty():
            self.bar = None
            return Progress()
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

        self.bar = bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), transient=True)
        bar.start()
        reading = bar.add_task("reading", total=None)
        tasks: dict[str, TaskID] = {}

        def delivery_start(total: int) -> None:
            bar.update(reading, visible=False)
            tasks["send"] = bar.add_task("sending", total=total)

        return Progress(
            on_recorded=lambda n: bar.update(reading, completed=n),
            on_delivery_start=delivery_start,
            on_result=lambda outcome: bar.advance(tasks["send"]) if "send" in tasks else None,
        )

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


# --- sandbox and demo ----------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep accepted events in DIR/accepted.jsonl.")
@click.option("--token-ttl", default=7200.0, show_default=True, help="Seconds a token lives.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Serve HTTPS with this PEM certificate (chain); to try api.ca_bundle.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The certificate's PEM private key, if not in the --tls-cert file.")
def sandbox(host: str, port: int, data_dir: Path | None, token_ttl: float,
            tls_cert: Path | None, tls_key: Path | None) -> None:
    """Run a local stand-in for the Ropo One API until Ctrl-C (for demos and tests)."""
    from batch.sandbox.server import serve, tls_context

    if tls_key is not None and tls_cert is None:
        raise click.UsageError("--tls-key needs --tls-cert")
    tls = tls_context(tls_cert, tls_key) if tls_cert is not None else None

    def ready(running: Sandbox) -> None:
        click.echo(f"Ropo One sandbox listening at {running.base_url}", err=True)
        click.echo(f"  cid {running.cid}; the apicode is the sandbox default (see batch/sandbox/server.py)", err=True)

    serve(host, port, data_dir, token_ttl=token_ttl, on_ready=ready, tls=tls)


@main.command()
@click.option("--workspace", type=click.Path(file_okay=False, path_type=Path),
              help="Use this folder (default: a new temporary one).")
def demo(workspace: Path | None) -> None:
    """Run every sample through the pipeline against a local sandbox; no configuration needed."""
    from rich.console import Console
    from rich.table import Table

    from batch.sandbox.demo import console_hint, run_demo

    if workspace is not None:
        workspace.mkdir(parents=True, exist_ok=True)
    result = run_demo(workspace, echo=lambda text: click.echo(text, err=True))
    table = Table(title="usageplace-batch demo", header_style="bold")
    for name in ("file", "result", "accepted", "rejected", "invalid", "failed", "duplicate", "receipt"):
        table.add_column(name, overflow="fold")
    for file in result.files:
        counts = file.counts
        table.add_row(
            file.label, file.state,
            *(str(counts.get(k, 0)) for k in ("accepted", "rejected", "invalid", "failed", "duplicate")),
            file.receipt.name if file.receipt else "",
        )
    Console(highlight=False, width=None if sys.stdout.isatty() else 160).print(table)
    workspace_dir = result.workspace
    click.echo(f"The sandbox accepted {result.sandbox_accepted} events ({result.sandbox_duplicates} repeats).")
    click.echo(f"Workspace: {workspace_dir}")
    click.echo(f"  receipts:  {workspace_dir}/inbox/*/outbox/   originals: {workspace_dir}/inbox/*/archive/")
    click.echo(f"  journal:   usageplace-batch status --config {workspace_dir}/service.yaml")
    click.echo(f"  drop more: cp samples/utf8_iso.csv {workspace_dir}/inbox/utf8_iso/another.csv")
    click.echo(f"             usageplace-batch run --once --config {workspace_dir}/service.yaml")
    click.echo("            (the sandbox has stopped: start one with `usageplace-batch sandbox --port PORT` and")
    click.echo("             set api.base_url in service.yaml to it, or run the demo again)")
    for line in console_hint(workspace_dir):
        click.echo(line)
    # the demo shows invalid and rejected records on purpose: it went well if it could run
    raise SystemExit(ExitStatus.UNUSABLE if result.exit_code == ExitStatus.UNUSABLE else ExitStatus.OK)


def _print_feeds(loaded: LoadedService, journal: JournalStore | None, only: str | None,
                 leases: LeaseStore | None = None) -> None:
    """The feeds of `status`: inbox, files waiting in processing/, the last file, the lease."""
    from rich.console import Console
    from rich.table import Table

    from batch.service.supervisor import feed_overview

    table = Table(title="feeds", header_style="bold")
    for name in ("feed", "inbox", "in processing/", "last file", "lease (holder, epoch, expires)", "expected"):
        table.add_column(name, overflow="fold")
    notes: list[str] = []
    for row in feed_overview(loaded, journal, leases):
        if only is not None and row["feed"] != only:
            continue
        waiting = row.get("error") and f"unknown: {row['error']}" or (", ".join(row["in_processing"]) or "none")
        last = row["last_file"]
        shown = f"{last['name']} ({last['state']}, {last['started'][:19]})" if last else "-"
        lease, marker = row.get("lease"), row.get("marker")
        held = "-"
        if lease is not None:
            held = f"{lease['holder']}, epoch {lease['epoch']}, {'until' if lease['live'] else 'expired'} " \
                   f"{lease['expires']}"
        if marker is not None and marker["foreign"]:
            held = f"{marker['instance']} (another journal), until {marker['expires']}"
        if marker is not None and marker.get("note"):
            notes.append(f"{row['feed']}: {marker['note']}")
        table.add_row(_escape(row["feed"]), _escape(str(row["inbox"])), _escape(waiting), _escape(shown),
                      _escape(held), _expected_cell(row["expected"]))
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for note in notes:
        console.print(_escape(f"note: {note}"), soft_wrap=True)


def _expected_cell(expected: dict[str, Any] | None) -> str:
    """The feed's schedule in `status`: red "late: expected by ..." while its file is late."""
    if expected is None:
        return "-"
    if expected["late"]:
        said = f"late: expected by {expected['due']} ({expected['description']})"
        return f"[bold red]{_escape(said)}[/]"
    return _escape(f"ok: next due {expected['next_due']} ({expected['description']})")


def _print_instances(loaded: LoadedService, leases: LeaseStore) -> None:
    """The instances of this journal seen in the last hour (live: seen within a lease)."""
    from rich.console import Console
    from rich.table import Table

    from batch.service.supervisor import instances_overview

    table = Table(title="instances (last hour)", header_style="bold")
    for name in ("instance", "host", "pid", "started", "last seen", "state"):
        table.add_column(name, overflow="fold")
    for row in instances_overview(leases, loaded.config.lease_seconds):
        state = "live" if row["live"] else (f"stopped {row['stopped']}" if row["stopped"] else "gone")
        table.add_row(_escape(row["instance"]), _escape(row["host"]), str(row["pid"]), row["started"], row["seen"],
                      state)
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


@main.command()
@CONFIG_OPTION
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; any but loopback needs the configuration's console.password and "
                   "console.allowed_hosts.")
@click.option("--port", default=8780, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
def console(config_path: Path, host: str, port: int) -> None:
    """The web console in a browser: the feeds, every record of a file, retries, downloads.

    Reads the service's configuration (reloaded when it changes) and journal; runs beside the
    service until Ctrl-C. Loopback by default; another address needs `console.password` and
    `console.allowed_hosts` (README: "Deploying off loopback")."""
    from batch.console.app import bind, create_app, serve

    settings = _load_service(config_path).config.logging  # the log redacts the configuration's secrets
    setup_logging(settings.level, settings.format)
    app = create_app(config_path, host=host)  # refuses a non-loopback address without a login and host names
    try:
        sock = bind(host, port)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    serve(app, sock, on_ready=lambda url: click.echo(f"usageplace-batch console at {url} (Ctrl-C to stop)"))


@main.command("run")
@CONFIG_OPTION
@click.option("--once", is_flag=True, help="Process what is ready in every feed, then exit (for cron).")
@click.option("--reload-interval", default=2.0, show_default=True, type=click.FloatRange(min=0.05),
              help="Seconds between checks of the configuration and mapping files for changes.")
@click.pass_context
def run_command(ctx: click.Context, config_path: Path, once: bool, reload_interval: float) -> None:
    """Watch every feed and process its files until SIGTERM/SIGINT (or, --once, until done).

    Exit (--once): 0 every record accepted; 1 some were not (invalid, rejected, failed, or a
    file already processed); 2 something could not run (inbox, credentials, unusable file).
    Without --once: 0 after a SIGTERM/SIGINT.
    """
    from batch.service.supervisor import Service

    # A stop request that comes while the configuration is loaded and the service is built
    # is kept and honoured as soon as the service runs (the default handler would kill it).
    early: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: early.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: early.append(signum))
    loaded = _load_service(config_path)
    settings = loaded.config.logging
    redactor = setup_logging("DEBUG" if ctx.obj.get("debug") else settings.level, settings.format)
    service = Service(loaded, once=once, reload_interval=reload_interval, redactor=redactor)
    service.install_signal_handlers()
    if early:
        service.request_stop(early[0])
    try:
        code = service.run()
    finally:
        # The interpreter's shutdown puts the default handlers back: a SIGTERM arriving then
        # would kill the process (exit -15) although the service stopped. Nothing is left to stop.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(code)


@main.command("validate-config")
@CONFIG_OPTION
def validate_config(config_path: Path) -> None:
    """Check a service configuration and every mapping it names; print every problem.

    Also resolves the secrets it refers to (environment variables, secret files) and checks
    whether local inbox folders and known_hosts files exist (warnings: they may exist only on
    the production host). Exit 1 when there is a problem.
    """
    from batch.service.supervisor import check_service_config

    _refuse_special(config_path)
    loaded, problems, warnings = check_service_config(config_path)
    if loaded is not None:
        redact_config_secrets(loaded.config)
    for problem in problems:
        _echo(problem, err=True)
    for warning in warnings:
        _echo(f"warning: {warning}", err=True)
    if problems:
        click.echo(f"{config_path}: {len(problems)} problem(s)", err=True)
        raise SystemExit(ExitStatus.PROBLEMS)
    assert loaded is not None  # no problems: the configuration was loaded
    feeds = ", ".join(f"{feed.name} ({loaded.mappings[feed.name].format}, {feed.inbox})"
                      for feed in loaded.config.feeds)
    click.echo(f"{config_path}: ok; API {loaded.config.api.base_url}; {len(loaded.config.feeds)} feed(s): {feeds}")


def run(argv: list[str] | None = None) -> int:
    """Entry point for tests and embedding: returns the exit code instead of exiting."""
    try:
        main.main(args=argv, prog_name="usageplace-batch", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return ExitStatus.OK

