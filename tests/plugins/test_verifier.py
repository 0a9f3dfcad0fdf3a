"""Answer extraction, voting normalisation and equivalence (ttc.plugins.verifier)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ttc.plugins import verifier
from ttc.plugins.verifier import (
    MathVerifyPool,
    extract_answer,
    is_equivalent,
    last_boxed,
    normalize_answer,
)

# (answer, reference, equivalent)
PAIRS: list[tuple[str | None, str | None, bool]] = [
    # fractions and decimals
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac12", True),
    ("1/2", "\\dfrac{1}{2}", True),
    ("-\\frac{3}{4}", "-0.75", True),
    ("\\frac{-3}{4}", "-\\frac34", True),
    ("0.333333", "\\frac{1}{3}", True),  # a decimal for a non-terminating fraction
    ("0.33", "\\frac{1}{3}", False),  # ...but not a coarse one
    ("\\frac{1}{3}", "0.3333", False),
    ("1000000.5", "1000000", False),  # no tolerance between exact decimals
    ("\\frac{14}{3}", "4\\frac{2}{3}", True),  # mixed number
    # plain numbers
    ("1,000", "1000", True),
    ("1,234,567", "1234567", True),
    ("3.0", "3", True),
    ("3", "4", False),
    ("-5", "5", False),
    ("\\$18", "18", True),
    ("18 \\text{ dollars}", "18", True),
    ("10\\%", "10", True),
    ("90^\\circ", "90", True),
    ("x = 5", "5", True),
    ("$42$", "42", True),
    ("\\boxed{7}", "7", True),
    # LaTeX expressions (math-verify)
    ("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2", True),
    ("2x+1", "1+2x", True),
    ("x+1", "x-1", False),
    ("\\sqrt{2}", "1.41", False),
    ("\\pi", "\\pi", True),
    # sets, intervals, tuples
    ("\\{1, 2\\}", "\\{2,1\\}", True),
    ("\\{1,2\\}", "\\{1,2,3\\}", False),
    ("[0, 1)", "[0,1)", True),
    ("(0,1]", "[0,1]", False),
    ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    # nothing to compare
    (None, "3", False),
    ("", "3", False),
    ("12", None, False),
]


@pytest.mark.parametrize(("answer", "reference", "expected"), PAIRS)
def test_is_equivalent(answer: str | None, reference: str | None, expected: bool) -> None:
    assert is_equivalent(answer, reference) is expected


EXTRACTIONS: list[tuple[str | None, str | None]] = [
    ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\boxed{2} + 1}", "\\boxed{2} + 1"),  # the outer box wins
    ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last box wins
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
    ("\\fbox{7}", "7"),
    ("hence \\boxed 5", "5"),
    ("cut off \\boxed{\\frac{1}{2", "2"),  # unclosed box: fall back to the last number
    ("9 * 2 = 18\n#### 1,234", "1,234"),
    ("#### 42.", "42"),
    ("\\boxed{3}\n#### 4", "3"),  # a box beats ####
    ("3 apples and then 4.5 kg.", "4.5"),
    ("it drops to -3 degrees", "-3"),
    ("3/4 of the cake", "3/4"),
    ("no numbers here", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTIONS)
def test_extract_answer(text: str | None, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_without_fallback() -> None:
    assert extract_answer("the sum is 12", fallback_to_last_number=False) is None
    assert extract_answer("x\n#### 12", fallback_to_last_number=False) == "12"


def test_last_boxed_none_without_box() -> None:
    assert last_boxed("12") is None


def test_normalize_answer_groups_equal_numbers() -> None:
    halves = ["\\frac{1}{2}", "1/2", "0.5", "\\boxed{0.50}", "$\\dfrac12$", "2/4"]
    assert {normalize_answer(a) for a in halves} == {"0.5"}
    assert {normalize_answer(a) for a in ["1,000", "1000.0", "1000", " 1000. "]} == {"1000"}
    assert normalize_answer("\\frac{1}{3}") == "1/3"
    assert normalize_answer("0.333") != normalize_answer("1/3")
    assert normalize_answer("-\\frac{3}{8}") == "-0.375"
    assert normalize_answer("x = 5") == "5"
    assert normalize_answer("\\left( 3, \\frac{\\pi}{2} \\right)") == "(3,\\frac{\\pi}{2})"
    assert normalize_answer(None) == ""


def test_grading_from_worker_threads() -> None:
    # math-verify's own signal timeouts raise off the main thread; ours must not.
    pairs = [("\\frac{\\sqrt{2}}{2}", "\\sqrt2/2", True), ("x+1", "x-1", False)] * 4
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: is_equivalent(p[0], p[1]), pairs))
    assert results == [expected for _, _, expected in pairs]


def test_pathological_input_times_out_and_the_pool_recovers() -> None:
    # sympy would compute 10^(10^10) inside one C call; only killing the worker stops it.
    pool = MathVerifyPool(max_workers=1)
    try:
        started = time.monotonic()
        assert pool.verify("$5$", "$10^{10^{10}}$", timeout_s=0.5) is None
        assert time.monotonic() - started < 10
        assert pool.restarts == 1
        assert pool.verify("$\\frac{1}{2}$", "$0.5$", timeout_s=30) is True
    finally:
        pool.close()


def test_is_equivalent_counts_a_timeout_as_wrong(caplog: pytest.LogCaptureFixture) -> None:
    assert is_equivalent("10^{10^{10}}", "5", timeout_s=0.5) is False
    assert "gave up" in caplog.text
    verifier.shutdown()  # the shared pool restarts on demand
    assert is_equivalent("\\sqrt{4}", "2") is True


def test_grading_from_a_script_without_main_guard(tmp_path: Path) -> None:
    # Workers must not re-import the caller's script (multiprocessing's spawn would).
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from ttc.plugins.verifier import is_equivalent\n"
        "print(is_equivalent('\\\\sqrt{4}', '2'), is_equivalent('x', 'y'))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_a_busy_math_verify_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """Defect 12: a worker that is not reading its stdin (stuck in sympy; here stopped with
    SIGSTOP, which no thread of it can survive) is killed when ttc is SIGKILLed."""
    from conftest import subprocess_env, wait_for

    script = (
        "import time\n"
        "from ttc.plugins import verifier\n"
        "assert verifier.is_equivalent('x+1', '1+x')\n"  # starts a worker, idle afterwards
        "(w,) = verifier._shared._live\n"
        "print(w.process.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())

    def gone() -> bool:
        try:
            state = Path(f"/proc/{worker}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        return state in ("Z", "X")  # dead, waiting for init to reap it

    try:
        os.kill(worker, signal.SIGSTOP)  # busy: deaf to its stdin closing
        parent.kill()
        parent.wait(timeout=10)
        time.sleep(0.5)
        wait_for(gone, timeout=15, what=f"math-verify worker {worker} to die")
    finally:
        if not gone():
            os.kill(worker, signal.SIGKILL)
