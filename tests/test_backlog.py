"""The backlog: expanding inputs, planning, status records, the manifest and the summary (real files)."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from astrodask.run.backlog import (
    BacklogStatus,
    FailedExposure,
    assemble_summary,
    backlog_status,
    expand_inputs,
    format_status,
    is_solved_file,
    manifest_files,
    plan_backlog,
    read_manifest,
    read_statuses,
    status_path,
    write_manifest,
    write_status,
)
from astrodask.errors import InputFileError
from astrodask.io.output import STAGES, SUMMARY_COLUMNS, SUMMARY_NAME, solution_path, summary_row
from astrodask.io.exposure import read_exposure_info
from astrodask.types import FAILED, FITS_SUFFIXES, SOLVED, ExposureResult, exposure_name


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_solution_file(out_dir: Path, name: str, status: str = "SOLVED") -> Path:
    """A minimal solution file: a primary header carrying ASTSTAT, as astrodask writes it."""
    path = solution_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(header=fits.Header({"ASTSTAT": status, "NMATCH": 120})).writeto(path)
    return path


def result(name: str, status: str = SOLVED, reason: str = "") -> ExposureResult:
    return ExposureResult(file=f"/data/{name}.fits.fz", name=name, status=status, reason=reason, stage="chi_square",
                          counts={"sources": 900, "references": 700, "regions_ok": 24, "matches": 500},
                          rms_arcsec=(0.05, 0.06), timings={"read": 1.5, "detect": 2.25})


# --------------------------------------------------------------------------
# expand_inputs
# --------------------------------------------------------------------------


def test_files_globs_and_folders_in_order_without_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    night1 = tmp_path / "night1"
    for name in ("c.fits.fz", "a.fits.fz", "b.fits.fz", "notes.txt"):
        touch(night1 / name)
    folder = tmp_path / "night2"
    for name in ("z.fits", "y.FIT", "x.fts", "w.fits.fz", "readme.md", ".hidden.fits", "old.wcs.fits"):
        touch(folder / name)
    single = touch(tmp_path / "single.fits")
    monkeypatch.chdir(tmp_path)

    paths = expand_inputs(["single.fits", "night1/*.fits.fz", str(folder), "night1/a.fits.fz", "single.fits"])

    assert all(p.is_absolute() for p in paths)
    assert paths == [single, night1 / "a.fits.fz", night1 / "b.fits.fz", night1 / "c.fits.fz",
                     folder / "w.fits.fz", folder / "x.fts", folder / "y.FIT", folder / "z.fits"]


def test_recursive_folders_and_double_star_globs(tmp_path: Path) -> None:
    top = touch(tmp_path / "top.fits")
    deep = touch(tmp_path / "n1" / "cam2" / "deep.fits.fz")
    touch(tmp_path / ".astrodask" / "ignored.fits")  # hidden folders are not searched

    assert expand_inputs([str(tmp_path)]) == [top]
    assert expand_inputs([str(tmp_path)], recursive=True) == [deep, top]
    assert expand_inputs([str(tmp_path / "**" / "*.fits.fz")], recursive=True) == [deep]
    with pytest.raises(InputFileError, match="matches no file"):
        expand_inputs([str(tmp_path / "**" / "*.fits.fz")])  # without recursive, ** is one folder level


def test_folder_scan_finds_a_gzipped_exposure(tmp_path: Path) -> None:
    """A ``.fits.gz`` exposure is found by a folder scan, named, and read (one suffix list for both)."""
    path = tmp_path / "night3" / "frame.fits.gz"
    path.parent.mkdir()
    image = np.arange(12 * 16, dtype=np.int16).reshape(12, 16)
    fits.PrimaryHDU(image, header=fits.Header({"DATE-OBS": "2025-03-01T01:02:03"})).writeto(path)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # astropy gzipped it, by its suffix
    touch(path.parent / "frame.wcs.fits")  # a solution file is never an exposure

    assert expand_inputs([str(path.parent)]) == [path]
    assert exposure_name(path) == "frame"
    assert read_exposure_info(path).shape == (12, 16)


@pytest.mark.parametrize("suffix", FITS_SUFFIXES)
def test_folder_scan_finds_every_suffix_that_names_an_exposure(tmp_path: Path, suffix: str) -> None:
    path = touch(tmp_path / f"frame{suffix.upper()}")
    assert expand_inputs([str(tmp_path)]) == [path]
    assert exposure_name(path) == "frame"


def test_list_file_with_comments_relative_paths_globs_and_nested_lists(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    lists = tmp_path / "lists"
    data = tmp_path / "data"
    a, b, c = (touch(data / f"{n}.fits.fz") for n in "abc")
    elsewhere = touch(tmp_path / "other" / "e.fits")
    (lists / "more.txt").parent.mkdir()
    (lists / "more.txt").write_text(f"{elsewhere}\n")
    (lists / "night.txt").write_text(
        "# night 1, camera 3\n"
        "\n"
        "../data/b.fits.fz\n"
        "   ../data/a.fits.fz   \r\n"
        f"{c}\n"
        "  # an indented comment\n"
        "../data/*.fits.fz\n"
        "@more.txt\n")
    monkeypatch.chdir(tmp_path)

    assert expand_inputs(["@lists/night.txt"]) == [b, a, c, elsewhere]


def test_list_file_of_5000_entries_is_fast(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    names = [f"exp_{k:05d}.fits.fz" for k in range(5000)]
    for name in names:
        (data / name).write_bytes(b"")
    listing = tmp_path / "backlog.txt"
    listing.write_text("# the whole backlog\n" + "".join(f"data/{name}\n" for name in names))

    start = time.perf_counter()
    paths = expand_inputs([f"@{listing}"])
    elapsed = time.perf_counter() - start

    assert len(paths) == 5000
    assert paths[0] == data / names[0] and paths[-1] == data / names[-1]
    assert elapsed < 1.0, f"5000 list entries took {elapsed:.2f} s"


def test_colliding_names_from_two_folders_are_listed(tmp_path: Path) -> None:
    first = touch(tmp_path / "cam1" / "frame.fits.fz")
    second = touch(tmp_path / "cam2" / "frame.fits")
    touch(tmp_path / "cam1" / "single.fits")

    with pytest.raises(InputFileError) as info:
        expand_inputs([str(tmp_path / "cam1"), str(tmp_path / "cam2")])

    message = str(info.value)
    assert "1 exposure name(s) occur more than once" in message
    assert f"frame: {first}, {second}" in message
    assert "single" not in message


@pytest.mark.parametrize(("item", "expected"), [
    ("missing.fits", "missing.fits: no such file or folder"),
    ("night9/*.fits.fz", r"night9/\*.fits.fz: glob pattern matches no file"),
    ("empty", "empty: folder holds no exposure"),
    ("@absent.txt", "absent.txt: cannot read list file"),
    ("@empty", "empty: cannot read list file"),
    ("@binary.txt", "binary.txt: cannot read list file"),
    ("@bad.txt", r"bad.txt:3: gone.fits: no such file or folder"),
])
def test_missing_items_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, item: str, expected: str) -> None:
    (tmp_path / "empty").mkdir()
    touch(tmp_path / "empty" / "notes.txt")
    touch(tmp_path / "ok.fits")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "bad.txt").write_text("# list\nok.fits\ngone.fits\n")
    monkeypatch.chdir(tmp_path)

    with pytest.raises(InputFileError, match=expected):
        expand_inputs([item])


# --------------------------------------------------------------------------
# plan_backlog
# --------------------------------------------------------------------------


def test_plan_skips_solved_exposures_but_not_failed_or_truncated_ones(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    paths = [touch(data / f"{n}.fits.fz") for n in ("solved", "truncated", "failed", "new", "empty")]
    write_solution_file(out, "solved")
    truncated = write_solution_file(out, "truncated")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    write_solution_file(out, "failed", status="FAILED")
    solution_path(out, "empty").write_bytes(b"")

    plan = plan_backlog(paths, out)

    assert plan.done == (paths[0],)
    assert plan.todo == tuple(paths[1:])
    assert (plan.n_done, plan.n_todo, plan.n_total) == (1, 4, 5)
    assert is_solved_file(solution_path(out, "solved"))
    assert not is_solved_file(truncated)
    assert not is_solved_file(out / "absent.wcs.fits")

    redo = plan_backlog(paths, out, redo=True)
    assert redo.todo == tuple(paths) and redo.done == ()
    assert plan_backlog(paths, tmp_path / "no-such-out").n_todo == 5


# --------------------------------------------------------------------------
# Status records, manifest, status and summary
# --------------------------------------------------------------------------


def test_status_records_round_trip_and_partial_json_is_ignored(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    row = summary_row(result("alpha"))
    row["sources"] = np.int64(900)  # numpy scalars are written as plain numbers
    path = write_status(row, tmp_path)
    write_status(summary_row(result("beta", FAILED, "regions: only 3 regions agree (need 6)")), tmp_path)
    status_path(tmp_path, "gamma").write_text('{"name": "gamma", "stat')  # a partial write

    assert path == tmp_path / ".astrodask" / "alpha.json"
    assert sorted(p.name for p in path.parent.iterdir()) == ["alpha.json", "beta.json", "gamma.json"]
    with caplog.at_level(logging.WARNING, logger="astrodask.run.backlog"):
        records = read_statuses(tmp_path)

    assert [r["name"] for r in records] == ["alpha", "beta"]
    assert "gamma.json: status record ignored" in caplog.text
    alpha = records[0]
    assert alpha["sources"] == 900 and alpha["status"] == SOLVED
    assert math.isnan(alpha["chi2"])
    assert alpha["finished_utc"].endswith("+00:00")
    original = summary_row(result("alpha"))
    assert set(alpha) == set(original) | {"finished_utc", "input_stamp", "astrodask_version"}
    for key, value in original.items():
        assert alpha[key] == value or (math.isnan(alpha[key]) and math.isnan(value)), key
    assert read_statuses(tmp_path / "nothing-here") == []
    with pytest.raises(ValueError, match="needs a file name"):
        write_status({"status": SOLVED}, tmp_path)


def test_manifest_accumulates_across_submits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert read_manifest(tmp_path / "out") == []
    write_manifest([Path("a.fits"), tmp_path / "b.fits"], "out")
    write_manifest([tmp_path / "b.fits", "c.fits"], "out")

    assert read_manifest("out") == [tmp_path / "a.fits", tmp_path / "b.fits", tmp_path / "c.fits"]
    # one file per submit, each with only what it added: no file is rewritten
    texts = [p.read_text() for p in manifest_files("out")]
    assert [t.count("\n") for t in texts] == [2, 1]
    assert write_manifest([tmp_path / "a.fits"], "out") is None  # nothing new: nothing written


def test_backlog_status_counts_and_format(tmp_path: Path) -> None:
    out = tmp_path / "out"
    inputs = [tmp_path / "data" / f"e{k}.fits.fz" for k in range(10)]
    write_status(summary_row(result("e0")), out)
    write_status(summary_row(result("e1", FAILED, "detect: no sources above 3 sigma")), out)
    write_solution_file(out, "e2")  # solved by `astrodask solve`: no record, a solution file
    write_status(summary_row(result("e3", FAILED, "like_fit: chi2/dof 9.1 > 5")), out)
    write_solution_file(out, "e3")  # an older solution: the record is newer and says failed
    truncated = write_solution_file(out, "e4")
    truncated.write_bytes(truncated.read_bytes()[:500])
    write_manifest(inputs, out)

    status = backlog_status(out, inputs=read_manifest(out))

    assert status.done == ("e0", "e2")
    assert [(f.name, f.reason) for f in status.failed] == [("e1", "detect: no sources above 3 sigma"),
                                                           ("e3", "like_fit: chi2/dof 9.1 > 5")]
    assert [p.name for p in status.pending] == [f"e{k}.fits.fz" for k in range(4, 10)]
    assert (status.n_done, status.n_failed, status.n_pending, status.n_total) == (2, 2, 6, 10)
    assert format_status(status) == (
        "2 solved, 2 failed, 6 pending (10 exposures)\n"
        "failed:\n"
        "  e1 (deterministic): detect: no sources above 3 sigma\n"
        "  e3 (deterministic): like_fit: chi2/dof 9.1 > 5\n"
        "pending: 6 (e4, e5, e6, e7, e8, ...)")
    assert backlog_status(out).pending == ()
    assert format_status(BacklogStatus(done=("a",), failed=())) == "1 solved, 0 failed, 0 pending (1 exposures)"


def test_format_status_caps_long_failure_lists() -> None:
    status = BacklogStatus(done=(), failed=tuple(FailedExposure(f"e{k}", "gaia: archive timeout") for k in range(30)))
    text = format_status(status, max_listed=3)
    assert text.splitlines()[1:] == ["failed:", "  e0: gaia: archive timeout", "  e1: gaia: archive timeout",
                                     "  e2: gaia: archive timeout", f"  ... and 27 more (see {SUMMARY_NAME})"]


def test_assemble_summary_holds_every_record(tmp_path: Path) -> None:
    results = [result("beta", FAILED, "regions: only 3 regions agree (need 6)"), result("alpha")]
    for res in results:
        write_status(summary_row(res), tmp_path / "cluster")
    (tmp_path / "cluster" / ".astrodask" / "broken.json").write_text("{")

    path = assemble_summary(tmp_path / "cluster")

    assert path == tmp_path / "cluster" / SUMMARY_NAME
    table = Table.read(path, format="ascii.ecsv")
    assert table.colnames == list(SUMMARY_COLUMNS) + [f"t_{stage}_s" for stage in STAGES]
    assert list(table["name"]) == ["alpha", "beta"]
    for row, res in zip(table, sorted(results, key=lambda r: r.name)):
        expected = summary_row(res)
        for name in table.colnames:
            if isinstance(expected[name], float) and np.isnan(expected[name]):
                assert np.isnan(row[name]), name
            elif expected[name] == "":
                assert np.ma.is_masked(row[name]) or row[name] == "", name  # ECSV reads "" back masked
            else:
                assert row[name] == expected[name], name
    assert not [p for p in os.listdir(tmp_path / "cluster") if p.endswith(".tmp")]


def test_assemble_summary_of_an_empty_folder(tmp_path: Path) -> None:
    table = Table.read(assemble_summary(tmp_path), format="ascii.ecsv")
    assert len(table) == 0 and "t_read_s" in table.colnames
    record = json.loads(write_status({"name": "x", "status": SOLVED}, tmp_path).read_text())
    assert record["status"] == SOLVED
    row = Table.read(assemble_summary(tmp_path), format="ascii.ecsv")[0]
    assert row["name"] == "x" and row["matches"] == 0 and np.isnan(row["chi2"])
