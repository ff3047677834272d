"""A progress bar: tqdm when it is installed, else a one-line counter with an ETA on stderr."""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """``advance(weight, text)`` after each unit of work; ``close()`` at the end.

    Units carry weights (an estimate of their cost) so that the ETA stays meaningful when a few
    units, such as compiling thousands of leaves, dominate.
    """

    def __init__(self, total: float, desc: str = "bench", enabled: bool = True):
        self.total = max(float(total), 1e-9)
        self.done = 0.0
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._last_print = 0.0
        self._tty = sys.stderr.isatty()
        self._bar = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=round(self.total, 3), desc=desc, file=sys.stderr,
                                 unit="u", dynamic_ncols=True,
                                 bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
            except ImportError:
                self._bar = None

    def set_text(self, text: str) -> None:
        if self.enabled and self._bar is not None:
            self._bar.set_postfix_str(text)
        elif self.enabled:
            self._show(text, force=False)

    def advance(self, weight: float = 1.0, text: str = "") -> None:
        self.done = min(self.total, self.done + weight)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(round(weight, 3))
            if text:
                self._bar.set_postfix_str(text)
            return
        self._show(text, force=False)

    def _show(self, text: str, force: bool) -> None:
        now = time.perf_counter()
        elapsed = now - self.t0
        frac = self.done / self.total
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        # On a terminal the line is rewritten in place; in a log, at most one line per 10 s.
        if not self._tty and not force and now - self._last_print < 10:
            return
        self._last_print = now
        eta_s = _clock(eta) if eta == eta else "?"
        line = f"[{frac * 100:5.1f}%] {_clock(elapsed)} elapsed, ~{eta_s} left  {text}"
        if self._tty:
            sys.stderr.write("\r" + line[:150].ljust(150))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            return
        self.done = self.total
        self._show("done", force=True)
        if self._tty:
            sys.stderr.write("\n")
            sys.stderr.flush()
