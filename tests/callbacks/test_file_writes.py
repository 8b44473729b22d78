"""Files the monitor rewrites survive a kill: the HTML report (callbacks/report.py) and the atomic write under it
(utils/files.py) leave the previous version or the new one, never a truncated or empty file."""

from __future__ import annotations

import html.parser
import os
import random
import select
import signal
import stat
import sys
import traceback

import pytest
import torch

from cam_callbacks.monitor.alarm import AlarmHit
from cam_callbacks.render.report import RunReport
from cam_callbacks.utils import files
from cam_callbacks.utils.files import atomic_write

KILL_TRIES = 10


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images = 0
        self.closed_body = False

    def handle_starttag(self, tag, attrs):
        self.images += tag == "img"

    def handle_endtag(self, tag):
        self.closed_body |= tag == "body"


def _big_report() -> RunReport:
    """A report of about 10 MB: 16 alarms with noise images (PNG cannot compress noise), so a write takes milliseconds."""
    report = RunReport()
    generator = torch.Generator().manual_seed(0)
    for step in range(16):
        hit = AlarmHit("gradcam", "shortcut_score", 0.9, 0.5, "above")
        report.add_alarm(step, step, [hit], {"gradcam": torch.randint(0, 256, (3, 400, 400), dtype=torch.uint8, generator=generator)})
    return report


def _writer(report: RunReport, folder: str, first_version: int, ready: int) -> None:
    """The child: rewrite the report forever (versions ``first_version``, +1, ...), telling ``ready`` (a pipe) the version
    whose page is built and about to be written. Never returns: exits 130 on Ctrl-C, 1 on any other error."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        build = RunReport.html
        version = first_version

        def html_then_signal(self, *args, **kwargs):
            page = build(self, *args, **kwargs)
            os.write(ready, version.to_bytes(4, "little"))
            return page

        RunReport.html = html_then_signal  # type: ignore[method-assign]  # in the forked child only
        while True:
            report.write(folder, "cam", f"config version {version}", "", "epoch")
            version += 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - the parent sees the exit code and this traceback
        traceback.print_exc()
    finally:
        os._exit(code)


def _next_version(ready: int) -> int:
    readable, _, _ = select.select([ready], [], [], 30.0)
    assert readable, "the writing child gave no sign of life within 30 s"
    data = os.read(ready, 4)
    assert len(data) == 4, "the writing child died before writing (see its traceback above)"
    return int.from_bytes(data, "little")


def _version_on_disk(path: str) -> int:
    """The version of a complete report at ``path``; fails on a truncated, empty or unparsable page."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data, "the report is 0 bytes"
    page = data.decode("utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>"), f"truncated report ({len(data)} bytes)"
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.closed_body and parser.images == 16, (parser.closed_body, parser.images)
    marker = "config version "
    start = page.index(marker) + len(marker)
    return int(page[start : page.index("<", start)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills a forked writer (POSIX)")
def test_report_survives_sigkill_and_sigint_during_writes(tmp_path):
    """A process rewriting the report is killed (SIGKILL) or interrupted (SIGINT) at random moments around its writes,
    ten times: the file is then absent (no write finished yet) or a whole report of the previous or the new version."""
    report = _big_report()
    rng = random.Random(19)
    folder = str(tmp_path)
    path = os.path.join(folder, "cam", "report.html")
    version = 0
    on_disk = None  # the version on disk (None: no file)
    signals = [signal.SIGKILL, signal.SIGINT] * (KILL_TRIES // 2)
    rng.shuffle(signals)
    for number, sent in enumerate(signals):
        ready, ready_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        first = version + 1
        child = os.fork()
        if child == 0:
            os.close(ready)
            _writer(report, folder, first, ready_write)
        os.close(ready_write)
        try:
            # the first try kills during the very first write (nothing on disk yet); the others after 1-3 pages
            for _ in range(1 if number == 0 else rng.randint(1, 3)):
                version = _next_version(ready)
            # the page is built: the write is under way; kill during it (a 10 MB write takes a few ms)
            select.select([], [], [], rng.uniform(0.0, 0.004))
            os.kill(child, sent)
            _, status = os.waitpid(child, 0)
        finally:
            os.close(ready)
        if sent == signal.SIGKILL:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        else:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 130, f"the writer did not stop on Ctrl-C: status {status}"
        # the child built page `version` after writing every earlier page of its own
        previous = version - 1 if version > first else on_disk
        if not os.path.exists(path):
            assert previous is None, f"try {number} ({sent.name}): the report of version {previous} is gone"
            continue
        found = _version_on_disk(path)
        assert found in (previous, version), f"try {number} ({sent.name}): version {found} on disk, expected {previous} or {version}"
        on_disk = found
    assert on_disk is not None
    leftovers = sorted(set(os.listdir(os.path.dirname(path))) - {"report.html"})
    assert all(name.startswith(files.TEMP_PREFIX + "report.html.") and name.endswith(files.TEMP_SUFFIX) for name in leftovers), leftovers
    assert len(leftovers) <= signals.count(signal.SIGKILL), "an interrupted (SIGINT) write left its temporary file"


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "note.md"
    atomic_write(path, "old")
    assert path.read_text(encoding="utf-8") == "old"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, b"new but interrupted")
    monkeypatch.undo()
    assert path.read_text(encoding="utf-8") == "old"
    assert os.listdir(path.parent) == ["note.md"], "the temporary file was left behind"
    assert atomic_write(str(path), "new") == str(path) and path.read_text(encoding="utf-8") == "new"


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    with open(plain, "w", encoding="utf-8") as handle:
        handle.write("x")
    atomic_write(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(os.stat(tmp_path / "atomic.txt").st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_report_write_returns_its_path_and_leaves_no_temporary_file(tmp_path):
    report = RunReport()
    report.add_run(1, 0, {"cam/gradcam/adcc": 0.5})
    path = report.write(str(tmp_path), "cam", "config", "", "epoch")
    assert path == os.path.join(str(tmp_path), "cam", "report.html")
    assert os.listdir(tmp_path / "cam") == ["report.html"]


def test_png_and_text_rewrites_keep_the_old_file_when_interrupted(tmp_path, monkeypatch):
    """A rerun of the same epoch (validate() again, a resume) rewrites <prefix>/<method>/grid_epoch=NNNN.png and the alarm text."""
    from cam_callbacks.render.png import save_pngs, save_text

    grid = torch.zeros(3, 4, 5)
    (path,) = save_pngs(str(tmp_path), {"gradcam": {"grid": grid}}, epoch=3)
    text = save_text(str(tmp_path), "alarm_epoch=0003.md", "old alarm")
    before = {name: open(name, "rb").read() for name in (path, text)}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_pngs(str(tmp_path), {"gradcam": {"grid": torch.ones(3, 4, 5)}}, epoch=3)
    with pytest.raises(KeyboardInterrupt):
        save_text(str(tmp_path), "alarm_epoch=0003.md", "new alarm")
    monkeypatch.undo()
    assert {name: open(name, "rb").read() for name in (path, text)} == before
