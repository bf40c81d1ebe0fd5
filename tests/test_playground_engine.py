"""The mapping playground's engine: checking a mapping's text as `validate` does, the diff of an
edit over archived files, saving with versions, the archive, and a new mapping from a sample."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch.config.service import load_service_config
from batch.console import mapping_store
from batch.console.mapping_store import (
    ArchiveNotAvailable,
    ConcurrentEdit,
    MappingRefused,
    MappingSlotTaken,
    PlaygroundError,
    UnsafeFileName,
    archived_copy,
    archived_files,
    last_archived_copies,
    mapping_versions,
    read_mapping,
    read_version,
    save_mapping,
)
from batch.transform.mapcheck import check_mapping_text
from batch.transform.mapdiff import diff_files, preview_file
from batch.transform.mapping import CompiledMapping
from batch.transform.samplefile import TemplateMismatch, detect_sample, mapping_from_template, proposed_mapping
from tests.fixtures_http import APICODE_ENV
from tests.fixtures_sftp import wait_until
from tests.service_helpers import MAPPING, ServiceThread, export, ids, write_config

ROOT = Path(__file__).resolve().parents[1]
HEADER = "id,place,time,status,note\n"


def compiled(text: str) -> CompiledMapping:
    checked = check_mapping_text(text, "m.yaml")
    assert checked.mapping is not None, [p.text for p in checked.problems]
    return CompiledMapping(checked.mapping)


# --- checking as you type ------------------------------------------------------------------------


def test_problems_have_the_line_and_column_of_the_key_they_name() -> None:
    text = MAPPING.replace("usageplacecode: {column: place}", "usageplacecode: {colum: place}")
    problems = check_mapping_text(text, "feed.yaml").problems
    assert [(p.line, p.column, p.key) for p in problems] == [(5, 20, "fields.usageplacecode.colum")]
    assert problems[0].text == (
        "feed.yaml:5:20: fields.usageplacecode.colum: unknown key; did you mean 'column'? (allowed here: column, "
        "const, default, map, map_default, map_ignore_case, pattern, required, split, template, trim, xpath)")


def test_a_yaml_syntax_error_has_its_line() -> None:
    text = MAPPING.replace('csv: {encoding: utf-8, delimiter: ","}', 'csv: {encoding: utf-8, delimiter: ","')
    problems = check_mapping_text(text, "feed.yaml").problems
    assert [p.text for p in problems] == [
        "feed.yaml:3:1: not valid YAML: expected ',' or '}', but got '<scalar>'"]
    assert problems[0].line == 3


def test_a_wrong_value_and_a_cross_field_problem_are_each_on_their_line() -> None:
    text = MAPPING.replace('delimiter: ","', 'delimiter: ";;"').replace(
        "status: {column: status}", "status: {column: status, map: {K: disconected}}")
    problems = check_mapping_text(text, "feed.yaml").problems
    assert [(p.line, p.key, p.message) for p in problems] == [
        (2, "csv.delimiter", "must be exactly one character (got ';;')"),
        (7, "fields.status",
         "status value 'disconected' is not one of connected, disconnected, not_disconnected"),
    ]


def test_the_problems_are_the_lines_validate_prints(tmp_path: Path) -> None:
    text = MAPPING.replace("usageplacecode: {column: place}", "usageplacecode: {colum: place}").replace(
        'delimiter: ","', 'delimiter: ";;"')
    path = tmp_path / "feed.yaml"
    path.write_text(text)
    printed = subprocess.run([sys.executable, "-m", "batch", "validate", str(path)], capture_output=True, text=True,
                             timeout=60)
    assert printed.returncode == 1
    lines = printed.stderr.splitlines()[:-1]  # the last line is the count of files with problems
    assert [p.text for p in check_mapping_text(text, str(path)).problems] == lines
    assert len(lines) == 2


def test_a_valid_text_gives_the_mapping() -> None:
    checked = check_mapping_text("\ufeff" + MAPPING, "feed.yaml")
    assert checked.ok and checked.problems == [] and checked.mapping is not None
    assert checked.mapping.format == "csv"


# --- the diff ------------------------------------------------------------------------------------


def archive_with(tmp_path: Path, files: dict[str, str]) -> list[tuple[str, Path]]:
    folder = tmp_path / "archive"
    folder.mkdir(exist_ok=True)
    found = []
    for name, rows in files.items():
        (folder / name).write_text(HEADER + rows)
        found.append((name, folder / name))
    return found


FILE_A = """\
a-1,643007572062450001,2024-02-05 06:30:00,disconnected,n1
a-2,643007572062450002,2024-02-05 06:31:00,K,n2
a-3,643007572062450003,2024-02-05 06:32:00,connected,n3
"""
FILE_B = """\
b-1,643007572062450004,2024-02-05 07:00:00,K,n4
b-2,643007572062450005,2024-02-05 07:01:00,connected,n5
"""


def test_diff_counts_outcome_changes_field_changes_and_shows_before_after(tmp_path: Path) -> None:
    files = archive_with(tmp_path, {"a.csv": FILE_A, "b.csv": FILE_B})
    edited = MAPPING.replace("status: {column: status}",
                             "status: {column: status, map: {K: disconnected}, map_default: connected}")
    diff = diff_files(compiled(MAPPING), compiled(edited), files).as_dict()
    assert [(f["name"], f["before"]["valid"], f["before"]["invalid"], f["after"]["valid"], f["after"]["invalid"],
             f["changed"]) for f in diff["files"]] == [("a.csv", 2, 1, 3, 0, 2), ("b.csv", 1, 1, 2, 0, 1)]
    assert diff["compared"] == 5 and diff["changed"] == 3
    assert diff["outcomes"] == [{"before": "invalid", "after": "valid", "records": 2}]
    assert diff["fields"] == [{"field": "status", "records": 3}]
    first = diff["samples"][0]
    assert first["file"] == "a.csv" and first["line"] == 2 and first["fields"] == ["status"]
    assert first["before"] == {"outcome": "valid", "event": {
        "id": "a-1", "usageplacecode": "643007572062450001", "time": "2024-02-05 06:30:00", "status": "disconnected",
        "description": "n1"}}
    assert first["after"]["event"]["status"] == "connected"  # 'disconnected' is not in the map: map_default
    second = diff["samples"][1]
    assert (second["line"], second["before"]["outcome"], second["after"]["event"]["status"]) == (3, "invalid",
                                                                                                  "disconnected")
    assert second["before"]["problems"][0]["field"] == "status"
    assert second["before"]["problems"][0]["value"] == "K"


def test_records_a_keep_rule_leaves_out_are_filtered_and_the_sample_is_capped(tmp_path: Path) -> None:
    files = archive_with(tmp_path, {"a.csv": FILE_A, "b.csv": FILE_B})
    edited = MAPPING + "keep: {column: status, equals: connected}\n"
    diff = diff_files(compiled(MAPPING), compiled(edited), files, sample=2).as_dict()
    assert [(f["after"]["records"], f["after"]["filtered"]) for f in diff["files"]] == [(1, 2), (1, 1)]
    assert sorted((o["before"], o["after"], o["records"]) for o in diff["outcomes"]) == [
        ("invalid", "filtered", 2), ("valid", "filtered", 1)]
    assert diff["fields"] == [] and diff["changed"] == 3
    assert len(diff["samples"]) == 2 and diff["samples"][0]["after"] == {"outcome": "filtered"}


def test_an_unchanged_mapping_changes_nothing_and_a_file_it_cannot_read_is_said(tmp_path: Path) -> None:
    files = archive_with(tmp_path, {"a.csv": FILE_A})
    same = diff_files(compiled(MAPPING), compiled(MAPPING), files).as_dict()
    assert (same["compared"], same["changed"], same["samples"]) == (3, 0, [])
    wrong_delimiter = MAPPING.replace('delimiter: ","', 'delimiter: ";"')
    diff = diff_files(compiled(MAPPING), compiled(wrong_delimiter), files).as_dict()
    after = diff["files"][0]["after"]
    assert after["records"] == 0
    assert after["error"] == (
        "line 1: missing columns 'id', 'place', 'time', 'status', 'note': the header row (line 1) has "
        "'id,place,time,status,note'. Check the delimiter, header_line and encoding in the mapping.")
    assert diff["outcomes"] == [{"before": "valid", "after": "not read", "records": 2},
                                {"before": "invalid", "after": "not read", "records": 1}]


def test_a_file_gone_since_it_was_listed_is_said_and_the_others_are_diffed(tmp_path: Path) -> None:
    files = archive_with(tmp_path, {"a.csv": FILE_A, "gone.csv": FILE_B, "b.csv": FILE_B})
    files[1][1].unlink()  # the service pruned it between the listing and the diff
    diff = diff_files(compiled(MAPPING), compiled(MAPPING), files).as_dict()
    assert [(f["name"], f["before"]["records"], f["before"]["error"], f["after"]["error"])
            for f in diff["files"]] == [
        ("a.csv", 3, None, None),
        ("gone.csv", 0, "cannot read the file: No such file or directory",
         "cannot read the file: No such file or directory"),
        ("b.csv", 2, None, None)]
    shown = preview_file(compiled(MAPPING), files[1][1])
    assert shown.counts.as_dict()["error"] == "cannot read the file: No such file or directory"


def test_preview_of_a_file_counts_every_record_and_keeps_the_first() -> None:
    mapping = (ROOT / "config/mappings/finnish_cp1252.yaml").read_text()
    shown = preview_file(compiled(mapping), ROOT / "samples/finnish_cp1252.csv", limit=2)
    assert (shown.counts.valid, shown.counts.invalid, len(shown.records)) == (4, 0, 2)
    assert shown.records[0]["line"] == 4 and shown.records[0]["event"]["id"] == "KT-2024-0001"


# --- saving --------------------------------------------------------------------------------------


@pytest.fixture
def feed(tmp_path: Path, sandbox):
    inbox = tmp_path / "inbox"
    (inbox / "archive").mkdir(parents=True)
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    return load_service_config(config).config.feeds[0]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_save_writes_a_valid_mapping_and_keeps_the_earlier_versions(feed) -> None:
    path = feed.mapping
    first = read_mapping(feed)
    assert first.text == MAPPING and first.hash == sha(MAPPING.encode())
    texts = [MAPPING.replace("note}", f"note, default: v{n}}}") for n in range(1, 5)]
    base = first.hash
    for text in texts:
        saved = save_mapping(feed, text, base, versions=3)
        assert saved.kept == "mapping.yaml.1"
        base = saved.hash
    assert path.read_text() == texts[3]
    assert [path.with_name(f"mapping.yaml.{n}").read_text() for n in (1, 2, 3)] == [texts[2], texts[1], texts[0]]
    assert not path.with_name("mapping.yaml.4").exists()  # the oldest beyond 3 is dropped
    assert mapping_versions(feed) == ["mapping.yaml.1", "mapping.yaml.2", "mapping.yaml.3"]


def test_save_refuses_an_invalid_text_and_a_concurrent_edit(feed) -> None:
    base = read_mapping(feed).hash
    broken = MAPPING.replace("usageplacecode: {column: place}", "usageplacecode: {colum: place}")
    with pytest.raises(MappingRefused) as refused:
        save_mapping(feed, broken, base)
    assert [p.line for p in refused.value.problems] == [5]
    assert feed.mapping.read_text() == MAPPING and mapping_versions(feed) == []

    feed.mapping.write_text(MAPPING + "# someone else's edit\n")
    with pytest.raises(ConcurrentEdit) as concurrent:
        save_mapping(feed, MAPPING.replace("note}", "note, default: mine}"), base)
    assert str(concurrent.value) == (
        "mapping.yaml was changed since this editor loaded it (by someone else, or in another tab): nothing was "
        "saved; reload it and make the edit again")
    assert feed.mapping.read_text() == MAPPING + "# someone else's edit\n"


def test_two_saves_at_once_from_the_same_text_one_wins_the_other_is_told(feed) -> None:
    import threading

    base = read_mapping(feed).hash
    texts = [MAPPING.replace("note}", f"note, default: editor{n}}}") for n in range(2)]
    start = threading.Barrier(2)
    outcomes: dict[int, str] = {}

    def save(n: int) -> None:
        start.wait()
        try:
            outcomes[n] = save_mapping(feed, texts[n], base).hash
        except ConcurrentEdit:
            outcomes[n] = "refused"

    threads = [threading.Thread(target=save, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes.values(), key=lambda value: value == "refused")[1] == "refused"
    winner = next(n for n, value in outcomes.items() if value != "refused")
    assert feed.mapping.read_text() == texts[winner]
    assert mapping_versions(feed) == ["mapping.yaml.1"] and feed.mapping.with_name("mapping.yaml.1").read_text() == \
        MAPPING


def test_a_gap_in_the_versions_is_filled_and_nothing_older_is_dropped(feed) -> None:
    path = feed.mapping
    path.with_name("mapping.yaml.1").write_text("one")
    path.with_name("mapping.yaml.3").write_text("three")  # .2 was removed by hand
    saved = save_mapping(feed, MAPPING.replace("note}", "note, default: x}"), read_mapping(feed).hash, versions=3)
    assert saved.kept == "mapping.yaml.1"
    assert [path.with_name(f"mapping.yaml.{n}").read_text() for n in (1, 2, 3)] == [MAPPING, "one", "three"]


def test_odd_names_among_the_versions_are_left_alone_and_the_save_refused(feed, tmp_path: Path) -> None:
    path = feed.mapping
    secret = tmp_path / "secret.txt"
    secret.write_text("apicode: s3cr3t\n")
    path.with_name("mapping.yaml.1").write_text("one")
    path.with_name("mapping.yaml.2").symlink_to(secret)
    path.with_name("mapping.yaml.3").mkdir()
    assert mapping_versions(feed) == ["mapping.yaml.1"]  # the link and the folder are no kept versions
    with pytest.raises(PlaygroundError) as refused:
        read_version(feed, 2)
    assert str(refused.value) == "mapping.yaml.2 is a symbolic link, not a version the playground kept"
    base = read_mapping(feed).hash
    with pytest.raises(MappingSlotTaken) as taken:
        save_mapping(feed, MAPPING.replace("note}", "note, default: x}"), base, versions=5)
    assert str(taken.value) == (
        "mapping.yaml.2 is a symbolic link, not a kept version of mapping.yaml: the playground does not move or "
        "delete it; nothing was saved (remove or rename it, then save again)")
    path.with_name("mapping.yaml.2").unlink()
    with pytest.raises(MappingSlotTaken) as taken:
        save_mapping(feed, MAPPING.replace("note}", "note, default: x}"), base, versions=5)
    assert str(taken.value).startswith("mapping.yaml.3 is a directory, not a kept version of mapping.yaml")
    assert path.read_text() == MAPPING and secret.read_text() == "apicode: s3cr3t\n"
    assert path.with_name("mapping.yaml.1").read_text() == "one"


def test_a_mapping_that_is_a_symbolic_link_is_not_replaced_nor_written_through(feed, tmp_path: Path) -> None:
    real = tmp_path / "shared" / "real.yaml"
    real.parent.mkdir()
    real.write_text(MAPPING)
    feed.mapping.unlink()
    feed.mapping.symlink_to(real)
    base = read_mapping(feed).hash  # the editor shows what the service reads
    with pytest.raises(MappingSlotTaken) as refused:
        save_mapping(feed, MAPPING.replace("note}", "note, default: x}"), base)
    assert str(refused.value) == (
        f"mapping.yaml is a symbolic link (to {real}): the playground neither replaces the link nor writes through "
        "it; nothing was saved (edit the file it leads to, or replace the link by the file)")
    assert feed.mapping.is_symlink() and real.read_text() == MAPPING and mapping_versions(feed) == []


@pytest.fixture
def apicode_env(sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(APICODE_ENV, sandbox.apicode)


def test_the_running_service_uses_a_saved_mapping_for_the_next_file(tmp_path: Path, sandbox, apicode_env) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, sandbox, [{"name": "local", "inbox": str(inbox)}])
    feed = load_service_config(config).config.feeds[0]
    with ServiceThread(config, reload_interval=0.1) as runner:
        wait_until(lambda: getattr(runner.service.workers.get("local"), "last_scan", None), 30, what="the first scan")
        (inbox / "v1.csv").write_bytes(export("v1", 2))
        wait_until(lambda: (inbox / "archive" / "v1.csv").exists(), 30, what="v1 archived")
        save_mapping(feed, MAPPING.replace("description: {column: note}", "description: {const: saved}"),
                     read_mapping(feed).hash)
        runner.wait_log("configuration #2 applied")
        (inbox / "v2.csv").write_bytes(export("v2", 2))
        wait_until(lambda: (inbox / "archive" / "v2.csv").exists(), 30, what="v2 archived")
    accepted = {event["id"]: event for event in sandbox.accepted}
    assert accepted["v1-1"]["description"] == "note 1"
    assert {accepted[i]["description"] for i in ids("v2", 2)} == {"saved"}


# --- the archive ---------------------------------------------------------------------------------


def test_archive_lists_data_files_newest_first_and_refuses_names_that_leave_it(feed, tmp_path: Path) -> None:
    archive = tmp_path / "inbox" / "archive"
    for age, name in enumerate(["new.csv", "mid.csv", "old.csv"]):
        (archive / name).write_text(HEADER)
        mtime = 1_700_000_000 - age * 100
        os.utime(archive / name, (mtime, mtime))
    (archive / "notes.txt").write_text("not a data file")
    (archive / "link.csv").symlink_to(tmp_path / "mapping.yaml")
    assert [f.name for f in archived_files(feed)] == ["new.csv", "mid.csv", "old.csv"]
    assert [f.name for f in archived_files(feed, 2)] == ["new.csv", "mid.csv"]
    with archived_copy(feed, "mid.csv") as copy:  # a copy in a temporary folder, fetched through the inbox
        assert copy.read_text() == HEADER and copy.parent != archive
    assert not copy.parent.exists() and (archive / "mid.csv").read_text() == HEADER
    with last_archived_copies(feed, 2) as files:
        assert [(name, path.read_text()) for name, path in files] == [("new.csv", HEADER), ("mid.csv", HEADER)]
    for name, message in [
        ("../service.yaml", "refused file name '../service.yaml': it contains a path separator"),
        ("..", "refused file name '..': not a plain file name"),
        ("link.csv", f"feed local: cannot fetch {archive}/link.csv: it is a symbolic link, not a regular file"),
        ("notes.txt", f"feed local: cannot fetch {archive}/notes.txt: it is not one of the feed's data files (a "
                      "marker, a dotfile, or a name its patterns do not take)"),
    ]:
        with pytest.raises(UnsafeFileName) as refused, archived_copy(feed, name):
            pass
        assert str(refused.value) == message
    with pytest.raises(PlaygroundError, match="^feed local: no file 'gone.csv' in its archive$"), \
            archived_copy(feed, "gone.csv"):
        pass


def test_an_archived_file_over_the_playgrounds_limit_is_refused(feed, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "inbox" / "archive"
    (archive / "big.csv").write_text(HEADER + "x" * 100)
    monkeypatch.setattr(mapping_store, "ARCHIVE_MAX_BYTES", 100)
    with pytest.raises(UnsafeFileName) as refused, last_archived_copies(feed, 5):
        pass
    assert str(refused.value) == (f"feed local: cannot fetch {archive}/big.csv: it is 126 bytes, larger than the "
                                  "limit of 100 bytes")


def test_a_local_feed_whose_inbox_folder_is_gone_says_so(feed, tmp_path: Path) -> None:
    (tmp_path / "inbox" / "archive").rmdir()
    (tmp_path / "inbox").rmdir()
    with pytest.raises(ArchiveNotAvailable) as refused:
        archived_files(feed)
    assert str(refused.value) == (f"feed local: its archive cannot be read: inbox folder {tmp_path}/inbox does not "
                                  "exist or is not a folder")


# --- a new mapping from a sample ------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "encoding", "delimiter", "header_line", "skip_footer"), [
    ("finnish_cp1252.csv", "cp1252", ";", 3, 1),
    ("finnish_gzip.csv.gz", "cp1252", ";", 3, 1),
    ("mds7_rows.txt", "utf-16", "\t", 3, 1),
    ("utf8_iso.csv", "utf-8", ",", 1, 0),
    ("record_types.csv", "utf-8", ";", None, 1),
])
def test_a_sample_is_detected_and_the_proposed_mapping_validates(sample: str, encoding: str, delimiter: str,
                                                                 header_line: int | None, skip_footer: int) -> None:
    detected = detect_sample((ROOT / "samples" / sample).read_bytes())
    assert (detected.format, detected.encoding, detected.delimiter, detected.header_line, detected.skip_footer) == (
        "csv", encoding, delimiter, header_line, skip_footer)
    text = proposed_mapping(detected, "new_feed", sample)
    assert check_mapping_text(text, "new_feed.yaml").problems == []


def test_the_proposed_mapping_maps_the_finnish_sample() -> None:
    detected = detect_sample((ROOT / "samples/finnish_cp1252.csv").read_bytes())
    assert detected.columns[:3] == ["Tapahtumatunnus", "Käyttöpaikka", "Asiakasnro"]
    text = proposed_mapping(detected, "new_feed", "finnish_cp1252.csv")
    assert 'usageplacecode:\n    column: "Käyttöpaikka"' in text
    assert "# values in the sample: EK, K, KY, k;" in text
    shown = preview_file(compiled(text), ROOT / "samples/finnish_cp1252.csv")
    # every record read; the statuses are codes until the administrator writes the map
    assert (shown.counts.valid, shown.counts.invalid) == (0, 4)
    assert shown.records[0] == {"line": 4, "problems": [{
        "field": "status", "source": "column 'Tila'", "value": "K",
        "message": "must be one of connected, disconnected, not_disconnected"}]}


def test_other_kinds_of_sample_are_named() -> None:
    assert detect_sample((ROOT / "samples/erp_export.xml").read_bytes()).record_element == "Event"
    assert detect_sample((ROOT / "samples/workbook_billing.xlsx").read_bytes()).format == "xlsx"
    ebcdic = detect_sample((ROOT / "samples/mainframe_ebcdic.dat").read_bytes())
    assert (ebcdic.format, ebcdic.encoding) == ("unknown", "cp037")


@pytest.mark.parametrize("sample", sorted(p.name for p in (ROOT / "samples").iterdir()))
def test_every_sample_diffed_with_its_own_mapping_changes_nothing(sample: str) -> None:
    """Both streams are joined on the line in every format (rows merged by event id, XML in its
    child process, fixed-length records, workbooks, compressed files): nothing is misaligned."""
    name = sample.split(".")[0]
    mapping = compiled((ROOT / "config" / "mappings" / f"{name}.yaml").read_text())
    diff = diff_files(mapping, mapping, [(sample, ROOT / "samples" / sample)])
    counts = diff.files[0].before
    assert counts.error is None and counts.records > 0
    assert diff.compared == counts.records and diff.changed == 0 and diff.samples == []


@pytest.mark.parametrize(("name", "sample", "old", "new", "expected"), [
    ("erp_export", "erp_export.xml", "disconnected: Usage place disconnected", "disconnected: Usage place cut off",
     (3, 1, [{"field": "description", "records": 1}], 5)),
    ("mds7_rows", "mds7_rows.txt", "CONNECTED: connected\n", "CONNECTED: disconnected\n",
     (3, 1, [{"field": "status", "records": 1}], 6)),
])
def test_an_edit_of_an_xml_or_a_rows_mapping_changes_exactly_its_records(
        name: str, sample: str, old: str, new: str, expected: tuple[int, int, list[dict[str, object]], int]) -> None:
    text = (ROOT / "config" / "mappings" / f"{name}.yaml").read_text()
    assert old in text
    diff = diff_files(compiled(text), compiled(text.replace(old, new)), [(sample, ROOT / "samples" / sample)])
    summary = diff.as_dict()
    assert (summary["compared"], summary["changed"], summary["fields"], summary["samples"][0]["line"]) == expected
    assert summary["outcomes"] == []


def test_a_template_takes_the_samples_layout_and_keeps_its_fields() -> None:
    detected = detect_sample((ROOT / "samples/finnish_cp1252.csv").read_bytes())
    template = "# a template\nname: old\nformat: csv\n\n# the fields\nfields:\n  usageplacecode: {column: a}\n" \
               "  time: {column: b}\n  status: {column: c}\n"
    assert mapping_from_template(template, "old.yaml", detected, "new", "s.csv") == (
        "# Started from the mapping old.yaml with the layout of the sample s.csv: check every field in the preview.\n"
        "# The sample's columns: Tapahtumatunnus, Käyttöpaikka, Asiakasnro, Sopimusnro, Pvm, Klo, Tila, Laskunumerot, "
        "Toimeksiannot, Selite\n"
        "# not UTF-8; Windows-1252 (cp1252) reads it: check the letters in the preview\n"
        "# a template\n"
        'name: "new"\nformat: csv\n'
        'csv:\n  encoding: cp1252\n  delimiter: ";"\n  header_line: 3\n  skip_footer: 1\n'
        "\n# the fields\nfields:\n  usageplacecode: {column: a}\n  time: {column: b}\n  status: {column: c}\n")
    with pytest.raises(TemplateMismatch) as refused:
        mapping_from_template((ROOT / "config/mappings/erp_export.yaml").read_text(), "erp_export.yaml", detected,
                              "new", "s.csv")
    assert str(refused.value) == ("the template erp_export.yaml reads xml files and the sample is a CSV export: "
                                  "start from the blank template or a CSV feed's mapping")
