"""What goes wrong while the model trains: reported at once, counted, and never allowed to end the fit.

A monitor must never cost a training run. ``ErrorReporter`` is where every contained failure
goes (a method raising, every probe image failing, an image write failing, a logger refusing a
scalar): a rank-zero warning naming CAMMonitor, the part and the cause (once per distinct cause),
a count the monitor logs as ``<prefix>/errors``, and messages for a TensorBoard text entry. With
``on_error="raise"`` the error is raised instead, for users who prefer a failing run.
"""

from __future__ import annotations

from typing import List, Optional, Set, Tuple

from pytorch_lightning.utilities import rank_zero_warn

#: ``CAMMonitor(on_error=...)``: report, switch the failing part off and train on; or raise.
ON_ERROR_CHOICES = ("warn", "raise")


class ErrorReporter:
    """Reports contained failures (see the module docstring).

    Args:
        on_error: ``"warn"`` (report and go on) or ``"raise"`` (re-raise the error).
        prefix: The monitor's tag prefix, named in the messages.
    """

    def __init__(self, on_error: str = "warn", prefix: str = "cam") -> None:
        self.on_error = on_error
        self.prefix = prefix
        #: Failures reported so far (all ranks count their own; rank zero logs its count).
        self.count = 0
        self._unlogged: List[str] = []
        self._said: Set[Tuple[str, str]] = set()

    def report(self, part: str, error: BaseException, consequence: str, epoch: Optional[int] = None) -> None:
        """Report that ``part`` failed with ``error`` (at ``epoch``, when given) and what happens now (``consequence``).

        Raises:
            BaseException: ``error`` itself when ``on_error="raise"``.
        """
        if self.on_error == "raise":
            raise error
        self.count += 1
        cause = f"{type(error).__name__}: {error}".strip()
        monitor = "CAMMonitor" if self.prefix == "cam" else f"CAMMonitor(prefix={self.prefix!r})"
        when = "" if epoch is None else f" at epoch {epoch}"
        message = f"{monitor}: {part} failed{when} ({cause}); {consequence}; training goes on."
        if (part, cause) not in self._said:  # the same failure every epoch is said once, counted every time
            self._said.add((part, cause))
            rank_zero_warn(message)
        self._unlogged.append(message)

    def take_messages(self) -> List[str]:
        """Messages not yet written to a text entry, oldest first."""
        messages, self._unlogged = self._unlogged, []
        return messages
