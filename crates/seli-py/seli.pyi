"""SELI geometry of classifiers under class imbalance (Thrampoulidis et al., NeurIPS 2022).

Every function returns the record the matching ``seli`` command writes (a dict; matrices and
float vectors as float64 NumPy arrays, counts as lists) and raises ``ValueError`` with the
CLI's message on bad input. Profiles: ``counts`` (class sizes), ``step`` ("K,R,RHO[,N_MIN]" or
a tuple), ``long_tail`` ("K,N_MAX,R"), or ``labels`` (an integer array, or a label file path)
with ``classes``; default STEP k = 10, R = 10, rho = 1/2, n_min = 500.
"""

from os import PathLike
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

Spec = Union[str, Sequence[Union[int, float, str]]]
Labels = Union[npt.ArrayLike, str, PathLike[str]]

def geometry(
    counts: Optional[Sequence[int]] = None,
    *,
    step: Optional[Spec] = None,
    long_tail: Optional[Spec] = None,
    labels: Optional[Labels] = None,
    classes: Optional[int] = None,
    d: Optional[int] = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Exact SELI geometry (schema seli.geometry.v1), as ``seli geometry --json``.

    >>> g = seli.geometry(step="10,100,0.5")
    >>> round(g["distances"]["dist_gw_seli_etf"], 4)
    0.6339
    >>> g["matrices"]["gram_w"].shape
    (10, 10)
    """

def metrics(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    classifier: Optional[npt.ArrayLike] = None,
    *,
    bias: Optional[npt.ArrayLike] = None,
    logits: Optional[npt.ArrayLike] = None,
    classes: Optional[int] = None,
    layout: Literal["kd", "dk"] = "kd",
    chunk: int = 4096,
    per_class: bool = False,
    eval_features: Optional[npt.ArrayLike] = None,
    eval_labels: Optional[npt.ArrayLike] = None,
    ood_features: Optional[npt.ArrayLike] = None,
) -> dict[str, Any]:
    """Features (n, d) float16/32/64 or a CPU torch tensor (any layout, not copied) against SELI and the ETF
    (schema seli.analyze.v1), as ``seli analyze --json``. ``per_class=True`` adds ``per_class``:
    one dict per class (the columns of ``seli analyze --per-class``); ``eval_features`` and
    ``eval_labels`` add ``eval`` (held-out accuracy, NCC accuracy, NC4 against the training
    class means); ``ood_features`` adds ``ood`` (NC5).

    >>> m = seli.metrics(H, y, model.fc.weight.detach().cpu().numpy())
    >>> m["values"]["dist_gw_seli"], m["values"]["dist_gw_etf"], m["values"]["nc1"]
    """

class Accumulator:
    """``seli.metrics`` accumulated batch by batch (a training loop, or several workers), in
    memory O(k*d + d^2) whatever n. Batches: features (b, d) as NumPy float16/32/64 or CPU
    torch tensors (bfloat16 too; CUDA tensors are refused: pass ``x.cpu()``), labels (b,),
    logits (b, k) if you have them, else ``W^T h + b`` from the classifier given here.

    ``merge`` combines accumulators of other samples (``to_bytes``/``from_bytes`` or pickle to
    send them): any batching and merge order give the single-pass values. ``ncc_mismatch``
    (NC4) and the exact ``dist_z`` need the final class means: feed the same samples again
    with ``add_second`` (after merging first passes); without it they are None / streaming.
    ``scatter="projected"`` keeps no d x d scatter: NC1 then comes from ``add_second`` at
    O(b*d*k) per batch instead of O(b*d^2).

    >>> acc = seli.Accumulator(10, 512, model.fc.weight)
    >>> for x, y in loader:
    ...     acc.add(model.features(x), y)
    >>> acc.metrics()["values"]["dist_gw_seli"]
    """

    def __init__(
        self,
        k: int,
        d: int,
        classifier: Optional[npt.ArrayLike] = None,
        *,
        bias: Optional[npt.ArrayLike] = None,
        layout: Literal["kd", "dk"] = "kd",
        scatter: Literal["full", "projected"] = "full",
    ) -> None: ...
    def add(self, features: Any, labels: Any, logits: Optional[Any] = None) -> None: ...
    def add_second(self, features: Any, labels: Any, logits: Optional[Any] = None) -> None: ...
    def merge(self, other: "Accumulator") -> None: ...
    def metrics(self) -> dict[str, Any]: ...
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> "Accumulator": ...
    @property
    def n(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def d(self) -> int: ...
    @property
    def counts(self) -> list[int]: ...

def ridge(
    counts: Optional[Sequence[int]] = None,
    *,
    step: Optional[Spec] = None,
    long_tail: Optional[Spec] = None,
    labels: Optional[Labels] = None,
    classes: Optional[int] = None,
    lam: Optional[float] = None,
    lambda_w: Optional[float] = None,
    lambda_h: Optional[float] = None,
    loss_reduction: Literal["sum", "mean"] = "sum",
    tol: float = 1e-10,
    max_iters: int = 200_000,
) -> dict[str, Any]:
    """Exact ridge-regularized UFM optimum with certificate (schema seli.ridge.v1).

    >>> r = seli.ridge(step="10,10,0.5", lam=0.5)
    >>> r["solution"]["gap"] < 1e-8
    True
    """

def ridge_path(
    counts: Optional[Sequence[int]] = None,
    *,
    step: Optional[Spec] = None,
    long_tail: Optional[Spec] = None,
    labels: Optional[Labels] = None,
    classes: Optional[int] = None,
    points: int = 25,
    min_fraction: float = 1e-4,
    loss_reduction: Literal["sum", "mean"] = "sum",
    tol: float = 1e-10,
    max_iters: int = 200_000,
) -> dict[str, Any]:
    """The ridge optimum along log-spaced lambda from lambda* down (schema seli.ridge-path.v1)."""

def svm(
    counts: Optional[Sequence[int]] = None,
    *,
    step: Optional[Spec] = None,
    long_tail: Optional[Spec] = None,
    labels: Optional[Labels] = None,
    classes: Optional[int] = None,
    tol: float = 1e-10,
    max_iters: int = 200_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Max-margin (nuclear-norm SVM) solution with dual certificate (schema seli.svm.v1)."""

def ufm(
    counts: Optional[Sequence[int]] = None,
    *,
    step: Optional[Spec] = None,
    long_tail: Optional[Spec] = None,
    labels: Optional[Labels] = None,
    classes: Optional[int] = None,
    d: int = 64,
    iters: int = 10_000,
    lr: float = 0.01,
    schedule: str = "norm-grad",
    lambda_w: float = 0.0,
    lambda_h: float = 0.0,
    bias: bool = False,
    loss_reduction: Literal["sum", "mean"] = "sum",
    dtype: Literal["f32", "f64"] = "f64",
    seed: int = 0,
    init_scale: float = 0.1,
    every: Optional[int] = None,
    log_every: Optional[int] = None,
    grad_tol: Optional[float] = None,
    threads: int = 0,
) -> dict[str, Any]:
    """UFM gradient descent in memory; ``metrics`` maps each metrics.csv column to a float64
    array (one entry per recorded iteration), ``config`` is the checked configuration as
    ``seli ufm`` writes it to config.json. Releases the GIL; Ctrl-C raises KeyboardInterrupt.

    >>> r = seli.ufm(step="10,10,0.5,5", d=32, iters=2000)
    >>> r["metrics"]["dist_gw_seli"][-1] < r["metrics"]["dist_gw_etf"][-1]
    True
    """
