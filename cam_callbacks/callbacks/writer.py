"""Writing images off the training thread.

Encoding a heatmap grid as PNG takes longer than computing it (about 0.2 s for a 1000x500 grid on
one CPU core, against a few milliseconds of rendering). :class:`BackgroundWriter` runs those jobs
(TensorBoard ``add_image`` calls, PNG files) on one worker thread, so training goes on meanwhile:
PIL's PNG encoder releases the GIL, and TensorBoard's event writer is thread-safe. At most
``max_pending`` jobs wait (older ones are waited for first), so memory stays bounded; :meth:`flush`
waits for all and re-raises the first error of a job.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, List, Optional

from cam_callbacks.render.png import encode_png

__all__ = ["BackgroundWriter", "add_png"]

def add_png(writer: Any, tag: str, image: Any, step: int) -> None:
    """Add a ``(3, H, W)`` uint8 image to a TensorBoard ``SummaryWriter``, PNG-encoded at :data:`PNG_COMPRESS_LEVEL`.

    Writers without torch's ``_get_file_writer`` (other SummaryWriter implementations) get ``add_image``.
    """
    get_file_writer = getattr(writer, "_get_file_writer", None)
    if get_file_writer is None:
        writer.add_image(tag, image, global_step=step)
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    encoded = Summary.Image(height=int(image.shape[1]), width=int(image.shape[2]), colorspace=3, encoded_image_string=encode_png(image))
    get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


class BackgroundWriter:
    """One worker thread for image writes.

    Example::

        >>> written = []
        >>> writer = BackgroundWriter()
        >>> writer.submit(written.append, "grid")
        >>> writer.flush(); writer.close()
        >>> written
        ['grid']
    """

    def __init__(self, max_pending: int = 8) -> None:
        self.max_pending = max_pending
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending: List[Future] = []

    def submit(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``job(*args, **kwargs)`` on the worker thread (arguments must not change afterwards)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cam_callbacks_writer")
        self._pending = [future for future in self._pending if not future.done() or future.exception() is not None]
        while len(self._pending) >= self.max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(job, *args, **kwargs))

    def flush(self) -> None:
        """Wait for every job; re-raise the first error of one."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Flush and stop the thread (a later :meth:`submit` starts a new one)."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
