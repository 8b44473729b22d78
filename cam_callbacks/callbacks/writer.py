"""Writing images off the training thread.

Encoding a heatmap grid as PNG takes longer than computing it (about 0.2 s for a 1000x500 grid on
one CPU core, against a few milliseconds of rendering). ``BackgroundWriter`` runs those jobs
(TensorBoard ``add_image`` calls, PNG files) on one worker thread, so training goes on meanwhile:
PIL's PNG encoder releases the GIL, and TensorBoard's event writer is thread-safe. At most
``max_pending`` jobs wait (older ones are waited for first), so memory stays bounded; ``flush``
waits for all. A job that fails is kept with the key it was submitted under (``BackgroundWriter.take_errors``):
a failing write is reported by the caller and never raised into training.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from cam_callbacks.render.png import encode_png


def add_png(writer: Any, tag: str, image: Any, step: int) -> None:
    """Add a ``(3, H, W)`` uint8 image to a TensorBoard ``SummaryWriter``, PNG-encoded at ``PNG_COMPRESS_LEVEL``.

    Writers without torch's ``_get_file_writer`` (other SummaryWriter implementations) get ``add_image``.
    """
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if get_file_writer is None:
        writer.add_image(tag, image, global_step=step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    encoded = Summary.Image(height=int(image.shape[1]), width=int(image.shape[2]), colorspace=3, encoded_image_string=encode_png(image))
    get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


class WriteError(NamedTuple):
    """A job that failed on the worker thread: where it wrote (the key given to ``BackgroundWriter.submit``) and why."""

    key: str
    error: BaseException


class BackgroundWriter:
    """One worker thread for image writes; a failing write never raises into the caller.

    A job's exception is kept as a ``WriteError`` (with the key the job was submitted under, e.g.
    a directory or a logger) and handed out by ``take_errors``, so the caller decides what to do
    (report it, stop writing there); ``submit``, ``flush`` and ``close`` never raise a
    job's error.

    Example::

        >>> written = []
        >>> writer = BackgroundWriter()
        >>> writer.submit("list", written.append, "grid")
        >>> writer.submit("broken", lambda: 1 / 0)
        >>> writer.flush(); writer.close()
        >>> written, [(e.key, type(e.error).__name__) for e in writer.take_errors()]
        (['grid'], [('broken', 'ZeroDivisionError')])
    """

    def __init__(self, max_pending: int = 8) -> None:
        self.max_pending = max_pending
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: List["Future[None]"] = []
        self._errors: List[WriteError] = []
        self._lock = threading.Lock()

    def _run(self, key: str, job: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        try:
            job(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - kept and handed to the caller by take_errors()
            with self._lock:
                self._errors.append(WriteError(key, error))

    def submit(self, key: str, job: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``job(*args, **kwargs)`` on the worker thread (arguments must not change afterwards); ``key`` names
        where it writes, for ``take_errors``. At most ``max_pending`` jobs wait: beyond that, this waits for the oldest."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam_callbacks_writer")
        self._pending = [future for future in self._pending if not future.done()]
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._run, key, job, args, kwargs))

    def flush(self) -> None:
        """Wait for every job (their errors are kept for ``take_errors``)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def take_errors(self) -> List[WriteError]:
        """The failed jobs since the last call, oldest first."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def close(self) -> None:
        """Flush and stop the thread (a later ``submit`` starts a new one)."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
