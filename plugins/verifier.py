"""Answer extraction, normalisation for voting, and equivalence checking.

Three layers, cheapest first:

1. `extract_answer` pulls the final answer out of a solution text: the last top-level
   `\\boxed{...}` / `\\fbox{...}` (nested braces allowed), else the text after the last
   `####` (GSM8K style), else the last number.
2. `normalize_answer` is a string-level canonical form used as a voting key: "\\frac{1}{2}",
   "1/2" and "0.5" all become "0.5"; "1,000" and "1000.0" become "1000". It never calls
   sympy, so a strategy can normalise thousands of samples cheaply.
3. `is_equivalent` decides correctness. Plain numbers are compared exactly (with a small
   tolerance when a decimal approximates a non-terminating fraction); everything else
   (LaTeX expressions, sets, intervals, tuples) goes to math-verify.

Why a process pool for math-verify: its own timeouts use `signal.alarm`, which only works
on the main thread, and the runner grades from worker threads. Worse, some inputs (e.g.
`10^{10^{10}}`) make sympy compute a huge integer inside one C call that holds the GIL, so
a watchdog *thread* could not even wake up to give up. We therefore disable math-verify's
timeouts and run it in a few worker processes (fresh interpreters talking JSON lines over
pipes); the caller waits for the reply with a deadline and kills a worker that overruns (a
fresh one is started on demand). Each worker forks a watchdog that kills it when the ttc
process dies, so a worker stuck in sympy is never left behind (see `_watch_parent`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import queue
import re
import subprocess
import sys
import threading
from fractions import Fraction

from ttc.errors import TtcError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
"""Seconds one math-verify comparison may take before it counts as not equivalent."""

STARTUP_TIMEOUT_S = 120.0
"""Seconds a fresh worker may take to import math-verify (sympy) before we give up."""

REL_TOLERANCE = 1e-6
"""How close a decimal must be to a non-terminating fraction ("0.333333" vs "1/3")."""

# -- extraction ---------------------------------------------------------------------------

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE_RE = re.compile(r"\\boxed\s+([^\s${}]+)")  # "\boxed 5" without braces
_HASH_RE = re.compile(r"####\s*([^\n]*)")
_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?")


def _matching_brace(text: str, start: int) -> int | None:
    """Index just past the brace closing the group that opens before `start`, or None."""
    depth = 1
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped brace (`\{`) does not open or close a group
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last top-level `\\boxed{...}` or `\\fbox{...}`, or None.

    Top-level matters for `\\boxed{\\boxed{2} + 1}`: the answer is the outer box. An unclosed
    box (a generation cut off by max_tokens) is ignored.
    """
    found: str | None = None
    pos = 0
    while (match := _BOXED_RE.search(text, pos)) is not None:
        end = _matching_brace(text, match.end())
        if end is None:
            break
        found = text[match.end() : end - 1].strip()
        pos = end
    if found is None:
        bare = _BOXED_BARE_RE.findall(text)
        if bare:
            found = bare[-1]
    return found


def last_number(text: str) -> str | None:
    """The last number in a text ("1,000", "-3.5" and "3/4" count as one number)."""
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def extract_answer(text: str | None, *, fallback_to_last_number: bool = True) -> str | None:
    """The final answer stated in a solution: boxed, else after `####`, else the last number."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashed = [h.strip().rstrip(".").strip() for h in _HASH_RE.findall(text)]
    if hashed and hashed[-1]:
        return hashed[-1]
    return last_number(text) if fallback_to_last_number else None


# -- normalisation ------------------------------------------------------------------------

_TEXT_CMD_RE = re.compile(
    r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_VAR_PREFIX_RE = re.compile(r"^[a-zA-Z]\s*=(?!=)")
_INT_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)")
_DECIMAL_RE = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?\.\d+|[+-]?\d+\.")
_SLASH_RE = re.compile(r"([+-]?\d+)/([+-]?\d+)")
_FRAC_ARG = r"(?:\{\s*([+-]?\d+)\s*\}|(\d))"  # "{12}" or a single digit ("\frac12")
_FRAC_RE = re.compile(r"([+-]?)\\frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)


def clean(answer: str) -> str:
    """Strip the presentation around an answer: box, math delimiters, spacing, text macros,
    degree and percent signs, a leading `x =`, a trailing full stop and all whitespace."""
    s = answer.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    for old, new in (
        ("\\$", ""),
        ("$", ""),
        ("\\(", ""),
        ("\\)", ""),
        ("\\[", ""),
        ("\\]", ""),
        ("\\left", ""),
        ("\\right", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\%", ""),
        ("%", ""),
        ("~", ""),
    ):
        s = s.replace(old, new)
    s = _TEXT_CMD_RE.sub(r"\1", s)
    s = _DEGREE_RE.sub("", s)
    s = "".join(s.split())
    if s.count("=") == 1:
        s = _VAR_PREFIX_RE.sub("", s)
    return s.rstrip(".")


def parse_number(answer: str) -> tuple[Fraction, bool] | None:
    """The exact value of a plain number and whether it was written as a decimal.

    Accepts integers (with thousands separators), decimals, `a/b` and `\\frac{a}{b}`; returns
    None for anything else (expressions, sets, words).
    """
    s = clean(answer)
    if _INT_RE.fullmatch(s):
        return Fraction(int(s.replace(",", ""))), False
    if _DECIMAL_RE.fullmatch(s):
        return Fraction(s.replace(",", "")), True
    try:
        if m := _SLASH_RE.fullmatch(s):
            return Fraction(int(m[1]), int(m[2])), False
        if m := _FRAC_RE.fullmatch(s):
            value = Fraction(int(m[2] or m[3]), int(m[4] or m[5]))
            return (-value if m[1] == "-" else value), False
    except ZeroDivisionError:
        return None
    return None


def _terminates(value: Fraction) -> bool:
    """Whether a fraction has a finite decimal expansion (its denominator is 2^a * 5^b)."""
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def _format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    if _terminates(value):
        # Exact: the loop bound is the number of decimal places the fraction needs.
        places = 0
        scaled = value
        while scaled.denominator != 1:
            scaled *= 10
            places += 1
        sign = "-" if scaled < 0 else ""
        digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
        return f"{sign}{digits[:-places]}.{digits[-places:]}"
    return f"{value.numerator}/{value.denominator}"


def normalize_answer(answer: str | None) -> str:
    """A canonical string for voting; equal strings count as the same answer.

    Numbers get one exact form (an integer, a terminating decimal, or `p/q`), so "1/2",
    "\\frac{1}{2}" and "0.50" vote together. Other answers are only cleaned (see `clean`);
    deciding that two different expressions are equal needs sympy, which voting avoids.
    """
    if answer is None:
        return ""
    number = parse_number(answer)
    if number is not None:
        return _format_number(number[0])
    return clean(answer)


def numbers_equal(a: tuple[Fraction, bool], b: tuple[Fraction, bool]) -> bool:
    """Exact equality, with a relative tolerance only where a decimal stands for a
    fraction that has no finite decimal form ("0.333333" for 1/3)."""
    (x, x_decimal), (y, y_decimal) = a, b
    if x == y:
        return True
    approximates = (x_decimal and not _terminates(y)) or (y_decimal and not _terminates(x))
    return approximates and math.isclose(x, y, rel_tol=REL_TOLERANCE, abs_tol=1e-12)


# -- equivalence --------------------------------------------------------------------------


def is_equivalent(
    answer: str | None, reference: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> bool:
    """Whether `answer` states the same mathematical object as `reference`.

    Safe to call from any thread. A math-verify comparison may take `timeout_s` (plus a
    worker's start-up, about half a second, on first use or after a kill); one that
    overruns counts as not equivalent and is logged.
    """
    if answer is None or reference is None or not answer.strip():
        return False
    a, r = clean(answer), clean(reference)
    if a == r:
        return True
    a_num, r_num = parse_number(answer), parse_number(reference)
    if a_num is not None and r_num is not None:
        return numbers_equal(a_num, r_num)
    result = _pool().verify(_as_latex(reference), _as_latex(answer), timeout_s=timeout_s)
    if result is None:
        logger.warning(
            "math-verify gave up after %.1fs comparing %r with %r; counted as wrong",
            timeout_s,
            answer[:200],
            reference[:200],
        )
        return False
    return result


def _as_latex(answer: str) -> str:
    """math-verify extracts from LaTeX environments; give a bare answer math delimiters."""
    s = answer.strip()
    if "$" in s or "\\boxed" in s or "\\(" in s or "\\[" in s:
        return s.replace("\\$", "")
    return f"${s}$"


# -- the math-verify worker pool ----------------------------------------------------------

# The worker is a fresh interpreter (`python -c`), not a multiprocessing child: spawn and
# forkserver re-import the parent's main script, which breaks scripts that lack an
# `if __name__ == "__main__"` guard, and fork is unsafe in a process that runs threads.
_WORKER_CODE = "from ttc.plugins.verifier import _serve; _serve()"


def _watch_parent(fd: int) -> None:
    """Fork a watchdog that SIGKILLs this worker once `fd` (the read end of a pipe whose
    only write end the ttc process holds) reaches EOF, i.e. ttc is gone, even by SIGKILL.

    An idle worker would see its stdin close, but a busy one does not read it; and a
    thread of the worker could not act either, as sympy may hold the GIL for minutes. The
    watchdog is forked before anything is imported, while the worker has one thread.
    """
    import select
    import signal

    worker = os.getpid()
    if os.fork() != 0:
        os.close(fd)
        return
    try:  # the watchdog process
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is ttc's to handle
        while os.getppid() == worker:  # reparented: the worker is gone
            ready, _, _ = select.select([fd], [], [], 1.0)
            if ready and not os.read(fd, 1):
                os.kill(worker, signal.SIGKILL)
                break
    finally:
        os._exit(0)


def _serve() -> None:
    """Worker process: read `[gold, prediction]` JSON lines on stdin, answer `true`/`false`
    lines on stdout, until stdin closes (or until the ttc process dies, see
    `_watch_parent`)."""
    if len(sys.argv) > 1 and hasattr(os, "fork"):
        _watch_parent(int(sys.argv[1]))
    protocol = sys.stdout
    sys.stdout = sys.stderr  # a stray print from a library must not corrupt the protocol
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout disabled" warnings
    from math_verify import parse, verify

    protocol.write("ready\n")
    protocol.flush()
    for line in sys.stdin:
        try:
            gold, prediction = json.loads(line)
            # Timeouts off: the parent enforces the deadline by killing this process.
            ok = verify(
                parse(gold, parsing_timeout=None),  # type: ignore[arg-type]
                parse(prediction, parsing_timeout=None),  # type: ignore[arg-type]
                timeout_seconds=None,
            )
        except Exception:  # a parse or sympy failure means "cannot show equal"
            ok = False
        protocol.write("true\n" if ok else "false\n")
        protocol.flush()


class _Worker:
    def __init__(self) -> None:
        # The worker's watchdog sees EOF on this pipe when we die (we hold the only write
        # end; os.pipe() descriptors are not inherited by other children).
        alive_r, self._alive_w = os.pipe() if hasattr(os, "fork") else (-1, -1)
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, *([str(alive_r)] if alive_r >= 0 else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            pass_fds=(alive_r,) if alive_r >= 0 else (),
        )
        if alive_r >= 0:
            os.close(alive_r)
        # A reader thread turns the blocking pipe into a queue we can wait on with a
        # deadline, portably (select() does not take pipes on Windows). It ends at EOF,
        # i.e. when the worker exits or is killed.
        self.replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="ttc-math-verify-reader").start()
        try:
            ready = self.replies.get(timeout=STARTUP_TIMEOUT_S) == "ready"
        except queue.Empty:
            ready = False
        if not ready:
            self.kill()
            raise TtcError(
                "the math-verify worker process did not start",
                hint="check that `python -c 'import math_verify, ttc'` works in this environment",
            )

    def _read(self) -> None:
        assert self.process.stdout is not None
        # This thread owns stdout: closing it from another thread while readline blocks
        # is not safe, so it is closed here, after EOF.
        with self.process.stdout as stdout:
            for line in stdout:
                self.replies.put(line.strip())
        self.replies.put("")  # EOF: the worker is gone

    def ask(self, gold: str, prediction: str, timeout_s: float) -> bool | None:
        """The worker's answer, or None when it overran the deadline or died."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps([gold, prediction]) + "\n")
            self.process.stdin.flush()
            reply = self.replies.get(timeout=timeout_s)
        except (OSError, ValueError, queue.Empty):  # broken pipe, closed file, deadline
            return None
        return {"true": True, "false": False}.get(reply)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=5)
        if self._alive_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._alive_w)
            self._alive_w = -1
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):  # a broken pipe has nothing left to flush
                self.process.stdin.close()


class MathVerifyPool:
    """At most `max_workers` math-verify processes, started on demand and reused."""

    def __init__(self, max_workers: int) -> None:
        self._slots = threading.BoundedSemaphore(max_workers)
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._lock = threading.Lock()
        self.restarts = 0
        """Workers killed for overrunning (for tests and diagnostics)."""

    def verify(self, gold: str, prediction: str, *, timeout_s: float) -> bool | None:
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = _Worker()
                with self._lock:
                    self._live.add(worker)
            result = worker.ask(gold, prediction, timeout_s)
            with self._lock:
                if result is None:
                    self._live.discard(worker)
                    self.restarts += 1
                else:
                    self._idle.append(worker)
            if result is None:
                worker.kill()
            return result

    def close(self) -> None:
        """Kill every worker, busy ones too (a busy one may be stuck in sympy)."""
        with self._lock:
            workers, self._live, self._idle = self._live, set(), []
        for worker in workers:
            worker.kill()


_shared: MathVerifyPool | None = None
_shared_lock = threading.Lock()


def _pool() -> MathVerifyPool:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MathVerifyPool(max_workers=min(4, os.cpu_count() or 1))
        return _shared


def shutdown() -> None:
    """Stop the shared math-verify workers; the next comparison starts new ones."""
    global _shared
    with _shared_lock:
        pool, _shared = _shared, None
    if pool is not None:
        pool.close()


# An idle worker exits when its stdin closes with us; a busy one would not.
atexit.register(shutdown)
