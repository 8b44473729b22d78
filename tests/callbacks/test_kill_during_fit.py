"""Kill tests of a fit: SIGINT (Ctrl-C) and SIGKILL at seeded random moments of a fit with the monitor leave every file
the monitor wrote complete, or absent, or as it was; never truncated.

The fit: TinyNet, ``CAMMonitor`` with the report on and an alarm that fires at every run (so the alarm text files are
written too), a TensorBoard logger (images in its event file, the report in its ``<log_dir>/cam/``) and a CSV logger (PNG
grids and alarm texts in its ``<log_dir>/cam/``: see ``cam_callbacks/callbacks/destinations.py``), 2 epochs, then
``trainer.validate`` over and over (each rewrites the last epoch's PNG files and the report). Every round runs in the same
folders, so the files of the earlier rounds are rewritten: "as it was" is tested as much as "complete".

How (the approach of ``test_file_writes.py``'s kill test of the report writer, for a whole fit): a zygote process imports
torch, Lightning and cam_callbacks once (seconds) and forks one child per round, so each round costs a fit, not the
imports. The child says ``write <path>`` just before each of the monitor's atomic writes; the parent kills it after a
seeded number of writes plus a random 0-3 ms (inside a write of a PNG or of the report, often), or at a random time
(training, computing maps). After each kill every file under ``<log_dir>/cam/`` must be whole: the report a parsed HTML
page with its closing tag, each PNG decoded by PIL, each text file UTF-8 ending with its newline; temporary files
(``.tmp-*.partial``) may be left by SIGKILL only.
"""

from __future__ import annotations

import contextlib
import html.parser
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import pytest

ROUNDS = 6
MARK = "@@ "  # protocol lines on the child's stdout start with this; Lightning's own output is ignored


class _Lines:
    """Lines of a pipe, read with a timeout."""

    def __init__(self, stream) -> None:
        self.fd = stream.fileno()
        self.buffer = b""

    def next(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if b"\n" in self.buffer:
                line, self.buffer = self.buffer.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if text.startswith(MARK):
                    return text[len(MARK) :]
                continue
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.fd], [], [], max(left, 0.0))
            assert readable, f"no word from the zygote within {timeout} s"
            chunk = os.read(self.fd, 65536)
            assert chunk, "the zygote died (see its stderr above)"
            self.buffer += chunk


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.closed = set()

    def handle_endtag(self, tag):
        self.closed.add(tag)


def _whole(path: Path) -> Optional[str]:
    """None if the file at ``path`` is complete, else what is wrong with it."""
    from PIL import Image

    data = path.read_bytes()
    if not data:
        return "0 bytes"
    if path.suffix == ".png":
        try:
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                image.load()
        except Exception as error:  # noqa: BLE001 - the reason is the assertion message
            return f"not a whole PNG ({type(error).__name__}: {error})"
        return None
    text = data.decode("utf-8")
    if path.suffix == ".html":
        if not (text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</body></html>")):
            return f"truncated page ({len(data)} bytes)"
        page = _Page()
        page.feed(text)
        page.close()
        return None if {"body", "html"} <= page.closed else "the page does not close body and html"
    return None if text.endswith("\n") else f"text without its final newline ({len(data)} bytes)"


def _monitor_files(root: Path) -> Dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file() and "cam" in path.relative_to(root).parts}


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the fits (POSIX)")
def test_sigint_and_sigkill_during_a_fit_leave_every_file_of_the_monitor_whole(tmp_path):
    from cam_callbacks.utils.files import TEMP_PREFIX, TEMP_SUFFIX

    rng = random.Random(19)
    signals = [signal.SIGINT, signal.SIGKILL] * (ROUNDS // 2)
    rng.shuffle(signals)
    repository = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repository), str(repository / "tests")])}
    zygote = subprocess.Popen([sys.executable, __file__, "--zygote"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    lines = _Lines(zygote.stdout)
    root = tmp_path / "run"
    seen_writes = 0
    pid = 0
    try:
        assert lines.next(timeout=300) == "ready"
        for number, sent in enumerate(signals):
            before = _monitor_files(root) if root.exists() else {}
            zygote.stdin.write(f"run {root} {number}\n".encode())
            zygote.stdin.flush()
            pid = int(lines.next(timeout=60).split()[1])
            # half the rounds: after a seeded number of the monitor's writes, within 0-3 ms (inside a write, often);
            # the others: at a random time of the fit (training, maps, the writer thread)
            writes = rng.randint(1, 30) if number % 2 == 0 else 0
            word = ""
            for _ in range(writes):
                word = lines.next(timeout=120)
                if not word.startswith("write "):
                    break
                seen_writes += 1
            time.sleep(rng.uniform(0.0, 0.003) if writes else rng.uniform(0.3, 2.5))
            if word.startswith("exit"):
                pytest.fail(f"round {number}: the child ended before the kill: {word}")
            os.kill(pid, sent)
            # Python can drop a Ctrl-C that lands while a finalizer runs ("Exception ignored in ..."): press it again
            # every 10 s, as a user would; the child must still be gone within 120 s
            deadline = time.monotonic() + 120
            pressed = time.monotonic()
            while not word.startswith("exit"):
                assert time.monotonic() < deadline, f"round {number}: the child did not exit within 120 s of {sent.name}"
                if sent == signal.SIGINT and time.monotonic() - pressed > 10:
                    os.kill(pid, signal.SIGINT)
                    pressed = time.monotonic()
                word = lines.next(timeout=120)
            status = int(word.split()[2])
            pid = 0  # reaped by the zygote: its number may be reused
            if sent == signal.SIGKILL:
                assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"round {number}: status {status}"
            else:  # Ctrl-C: Lightning's graceful shutdown, then exit
                assert os.WIFEXITED(status), f"round {number}: the fit did not stop on Ctrl-C (status {status})"
            after = _monitor_files(root)
            leftovers = [p for p in after if p.name.startswith(TEMP_PREFIX) and p.name.endswith(TEMP_SUFFIX)]
            assert not (leftovers and sent == signal.SIGINT), f"round {number}: an interrupted write left {leftovers}"
            for path, data in after.items():
                if path in leftovers or data == before.get(path):
                    continue  # a temporary file of a killed write, or the file as it was
                problem = _whole(path)
                assert problem is None, f"round {number} ({sent.name}): {path.relative_to(root)}: {problem}"
            for path in leftovers:
                path.unlink()  # a SIGKILL's temporary file: not the monitor's file; the next round starts clean of it
        files = _monitor_files(root)
        kinds = {path.suffix for path in files}
        assert {".png", ".html", ".md"} <= kinds, f"the rounds never got as far as every kind of file: {sorted(kinds)}"
        assert seen_writes >= ROUNDS, seen_writes
    finally:
        if pid:  # a child still running after a failed round must not outlive the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        zygote.stdin.close()
        try:
            zygote.wait(timeout=60)
        except subprocess.TimeoutExpired:
            zygote.kill()
            zygote.wait()


# ---------------------------------------------------------------------------------------------- the zygote and its children


def _say(text: str) -> None:
    os.write(1, (MARK + text + "\n").encode())


def _child(root: str, seed: int) -> None:
    """One round: a fit with the monitor, then validate() forever (each rewrites the last epoch's files and the report).
    Never returns: exits 130 on Ctrl-C (Lightning's shutdown may exit on its own), 1 on any other error."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import pytorch_lightning as pl
        import torch
        from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

        import cam_callbacks as cc
        from cam_callbacks.render import png, report

        from _lightning_models import TinyNet, loaders

        def announced(write):
            def call(path, data):
                _say(f"write {path}")
                return write(path, data)

            return call

        report.atomic_write = announced(report.atomic_write)  # type: ignore[attr-defined]  # in the forked child only
        png.atomic_write = announced(png.atomic_write)  # type: ignore[attr-defined]
        torch.set_num_threads(1)
        pl.seed_everything(seed)
        monitor = cc.CAMMonitor(
            methods=["gradcam"],
            target_layer="features",
            probe=4,
            metrics=(),
            alarm=[cc.ThresholdAlarm("shortcut_score", above=0.0)],
            budget=None,
            step="epoch",
        )
        loggers = [TensorBoardLogger(root, name="tb", version=0), CSVLogger(root, name="csv", version=0)]
        trainer = pl.Trainer(
            max_epochs=2,
            accelerator="cpu",
            devices=1,
            logger=loggers,
            callbacks=[monitor],
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            log_every_n_steps=1,
        )
        model = TinyNet()
        train, val = loaders(n_train=16, n_val=8)
        trainer.fit(model, train, val)
        while True:
            trainer.validate(model, val, verbose=False)
    except KeyboardInterrupt:
        code = 130
    except SystemExit as stop:  # Lightning ends an interrupted fit with exit(1) after its graceful shutdown
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001 - the parent sees the exit code and this traceback
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _zygote() -> None:
    """Import everything once, then fork a child per ``run <root> <seed>`` line; say ``pid`` and ``exit <pid> <status>``."""
    # imported once, before the forks (each round then costs a fit, not the imports)
    import pytorch_lightning.loggers  # noqa: F401
    import torch.utils.tensorboard  # noqa: F401
    from PIL import Image  # noqa: F401

    import cam_callbacks.callbacks.cam_monitor  # noqa: F401

    import _lightning_models  # noqa: F401

    _say("ready")
    for line in sys.stdin:
        _, root, seed = line.split()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(root, int(seed))
        _say(f"pid {pid}")
        _, status = os.waitpid(pid, 0)
        _say(f"exit {pid} {status}")


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote()
