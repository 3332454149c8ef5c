"""How close an artifact's embeddings are to PyTorch's: max abs difference (fp32) and cosine (int8).

An fp32 artifact must reproduce PyTorch within ``tolerance`` (1e-4 by default): anything larger is
an exporter bug, not rounding. An int8 artifact cannot; its fidelity is the cosine of its
embeddings to the fp32 ones, and the agreement of zero-shot top-1 decisions
(:mod:`mobileclip2.export.calibration`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ExportParityError

Runner = Callable[[np.ndarray], np.ndarray]
"""An artifact loaded in its runtime: a batch of inputs in, embeddings out."""


def max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        raise ExportParityError(f"the artifact returned shape {got.shape}, PyTorch {want.shape}")
    return float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())


def cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two embedding matrices."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    return (got * want).sum(axis=1) / np.maximum(norms, 1e-12)


def run_batched(runner: Runner, inputs: np.ndarray, batch: int | None) -> np.ndarray:
    """Run ``runner`` over ``inputs`` in chunks of ``batch`` (None: all at once; 1 for fixed-batch
    artifacts)."""
    if batch is None:
        return runner(inputs)
    return np.concatenate([runner(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def check_max_abs_diff(label: str, got: np.ndarray, want: np.ndarray, tolerance: float | None) -> float:
    """Max |artifact - PyTorch|; raises ExportParityError above ``tolerance`` (NaN fails too)."""
    diff = max_abs_diff(got, want)
    if tolerance is not None and not diff <= tolerance:
        raise ExportParityError(
            f"{label}: the exported artifact and PyTorch differ by up to {diff:.3g} "
            f"(tolerance {tolerance:g}) "
            f"on {len(want)} inputs. Nothing was written under the final names; please report this with "
            "your torch and exporter versions (`mobileclip2 info`)."
        )
    return diff
