"""Rewards for digit images: a classifier's probability of the asked class.

`DigitReward` is the alignment reward the strategies search with (a logistic-regression
classifier on the 8x8 digits: `p(c | x)`). `DigitJudge` is a second classifier of another
family (an RBF support-vector machine) that decides success ("is this a `c`?") in the
benchmark, so a sample that only fools the reward does not count as a success. Both train
in about a second on first use (in-process, cached per process).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ttc.flow.model import load_digits_data


@functools.cache
def _reward_classifier() -> Any:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    x, y = load_digits_data()
    with threadpool_limits(1):  # BLAS threads on a small, busy machine only slow it down
        return LogisticRegression(C=0.5, max_iter=500).fit(x, y)


@functools.cache
def _judge_classifier() -> Any:
    from sklearn.svm import SVC
    from threadpoolctl import threadpool_limits

    x, y = load_digits_data()
    with threadpool_limits(1):
        return SVC(C=5.0, gamma="scale").fit(x, y)


class DigitReward:
    """`reward(x, c)`: the classifier's probability that each image in `x` (model space,
    shape (n, 64)) is a `c`."""

    name = "digit_classifier"

    def __init__(self) -> None:
        self._clf = _reward_classifier()

    def __call__(self, x: np.ndarray, target: int) -> np.ndarray:
        x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
        proba = self._clf.predict_proba(x)
        return np.asarray(proba[:, target], dtype=np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._clf.predict(np.clip(x, -1.0, 1.0)))


class DigitJudge:
    """The success check: the class a second classifier sees in each image."""

    name = "digit_svm"

    def __init__(self) -> None:
        self._clf = _judge_classifier()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._clf.predict(np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)))
