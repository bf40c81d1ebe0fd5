"""The `usageplace-batch` command: argument parsing, printing and exit codes — nothing else.

Exit codes: 0 all good; 1 the command ran but found problems (invalid records, invalid
mappings, events not accepted); 2 it could not run (unusable file, mapping or configuration).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from batch import __version__

EXIT_OK, EXIT_PROBLEMS, EXIT_UNUSABLE = 0, 1, 2

log = logging.getLogger("batch.cli")


class Unusable(click.ClickException):
    """A clear, user-facing reason why the command cannot run (exit 2)."""

    exit_code = EXIT_UNUSABLE

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


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
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            else:
                click.echo(f"error: {_describe(exc)} (run with --debug for details)", err=True)
            raise SystemExit(EXIT_UNUSABLE) from None


def _describe(exc: BaseException) -> str:
    from batch.config.yamlload import ConfigError
    from batch.readers import FileError

    if isinstance(exc, (ConfigError, FileError)):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, OSError) else text


@click.group(cls=BoundaryGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.version_option(__version__, prog_name="usageplace-batch")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Map legacy CSV/XML exports to Ropo One usage place events, deliver them, and write receipts."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


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
            mapping = load_mapping(path)
        except ConfigError as exc:
            failed += 1
            for problem in exc.problems:
                click.echo(str(problem), err=True)
            continue
        click.echo(f"{path}: ok ({mapping.format}, {len(_mapped_fields(mapping))} fields)")
    if failed:
        click.echo(f"{failed} of {len(mappings)} mapping file(s) have problems", err=True)
        raise SystemExit(EXIT_PROBLEMS)


def _mapped_fields(mapping: Any) -> list[str]:
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
    from batch.extract import mapped_chunks
    from batch.mapping import CompiledMapping
    from batch.readers import FileError

    try:
        compiled = CompiledMapping(load_mapping(mapping))
    except ConfigError as exc:
        raise Unusable(f"the mapping cannot be used:\n{exc}") from None
    counts = {"valid": 0, "invalid": 0}
    shown = 0
    printer = _JsonPrinter() if as_json else _TablePrinter(file)
    try:
        with _open_input(file) as stream:
            for records in mapped_chunks(compiled, stream):
                for record in records:
                    counts["valid" if record.ok else "invalid"] += 1
                    if (limit is None or shown < limit) and not (errors_only and record.ok):
                        printer.record(record)
                        shown += 1
    except FileError as exc:
        printer.flush()
        raise Unusable(f"{file}: {exc}") from None
    printer.flush()
    total = counts["valid"] + counts["invalid"]
    click.echo(f"{file}: {total} records, {counts['valid']} valid, {counts['invalid']} invalid", err=True)
    if counts["invalid"]:
        raise SystemExit(EXIT_PROBLEMS)


def _open_input(path: Path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise Unusable(f"{path}: {exc.strerror}") from None


class _JsonPrinter:
    def record(self, record: Any) -> None:
        if record.ok:
            payload = {"record": record.line, "event": record.event}
        else:
            payload = {"record": record.line, "errors": [error.as_dict() for error in record.errors]}
        click.echo(json.dumps(payload, ensure_ascii=False))

    def flush(self) -> None:
        pass


class _TablePrinter:
    """A readable table; buffered per 200 rows so that long files start printing at once."""

    def __init__(self, file: Path):
        from rich.console import Console

        # piped output is read in files and terminals wider than 80 columns
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        self.file = file
        self.rows: list[Any] = []

    def record(self, record: Any) -> None:
        self.rows.append(record)
        if len(self.rows) >= 200:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        from rich.table import Table

        table = Table(show_lines=False, header_style="bold")
        for name in ("line", "id", "usageplacecode", "time", "status"):
            table.add_column(name, no_wrap=True)
        table.add_column("invoices", overflow="fold", max_width=30)
        table.add_column("description / problem", overflow="fold", ratio=1)
        for record in self.rows:
            if record.ok:
                event = record.event
                invoices = ", ".join(
                    f"{i.get('invoicenumber', '?')}/{i.get('jobid', '-')}" for i in event.get("invoices", [])
                )
                table.add_row(
                    str(record.line), event.get("id", ""), event.get("usageplacecode", ""), event.get("time", ""),
                    event.get("status", ""), invoices, event.get("description", ""),
                )
            else:
                partial = record.partial
                problems = "\n".join(_problem_text(error) for error in record.errors)
                table.add_row(
                    str(record.line), partial.get("id", ""), partial.get("usageplacecode", ""), "",
                    "[red]invalid[/red]", "", f"[red]{_escape(problems)}[/red]",
                )
        self.console.print(table)
        self.rows = []


def _problem_text(error: Any) -> str:
    text = error.field
    if error.source:
        text += f" ({error.source}"
        text += f" = {error.value!r})" if error.value is not None else ")"
    return f"{text}: {error.message}"


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


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


def run(argv: list[str] | None = None) -> int:
    """Entry point for tests and embedding: returns the exit code instead of exiting."""
    try:
        main.main(args=argv, prog_name="usageplace-batch", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return EXIT_OK

