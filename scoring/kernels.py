"""Vectorised decision function of many ``StandardScaler + OneClassSVM(rbf)`` models at once.

For one model, scikit-learn computes

    z = (x - mean) / scale
    f(x) = sum_i alpha_i * exp(-gamma * ||z - sv_i||^2) + intercept

Calling that per sensor costs ~100 us of Python and validation overhead for a few microseconds
of arithmetic. Here the parameters of all models live in padded arrays (support vectors padded
with zeros and dual coefficients padded with 0, so padding contributes nothing) and one pass
evaluates a whole block of sensors:

* ``sqrt(gamma)`` is folded into the scaled data and support vectors, so the squared distance is
  ``||z'||^2 + ||sv'||^2 - 2 z'.sv'`` with a batched matmul for the cross term (BLAS) instead of
  an ``(s, b, v, f)`` difference tensor;
* blocks bound memory (the ``(s, b, v)`` kernel block is the only large temporary) and keep it
  in cache;
* sensors are sorted by support-vector count so a block is trimmed to its own largest count
  rather than the model set's.

Everything is float64; the result equals ``Pipeline.decision_function`` to ~1e-12.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BLOCK_ELEMENTS = 1 << 16
"""Target size of one ``(sensors, buckets, support_vectors)`` kernel block: 512 KiB of float64
fits in L2; blocks of 4 MiB measured twice as slow."""


@dataclass(frozen=True)
class OcsvmArrays:
    """Fitted parameters of many scaler + RBF one-class SVM models, padded to common shapes.

    Attributes
    ----------
    scaler_mean, scaler_scale : ndarray of shape (n_models, n_features)
        ``StandardScaler.mean_`` and ``scale_`` (padding: mean 0, scale 1).
    support_vectors : ndarray of shape (n_models, max_sv, n_features)
        Support vectors in scaled space, zero-padded.
    dual_coef : ndarray of shape (n_models, max_sv)
        Dual coefficients, zero-padded (a zero coefficient removes a padded support vector).
    n_support : ndarray of shape (n_models,)
        Number of real support vectors per model.
    intercept : ndarray of shape (n_models,)
        ``OneClassSVM.intercept_`` (``-rho``).
    gamma : ndarray of shape (n_models,)
        The fitted RBF ``gamma`` (``OneClassSVM._gamma``, i.e. "scale" already resolved).
    """

    scaler_mean: np.ndarray
    scaler_scale: np.ndarray
    support_vectors: np.ndarray
    dual_coef: np.ndarray
    n_support: np.ndarray
    intercept: np.ndarray
    gamma: np.ndarray

    def prepared(self) -> PreparedOcsvm:
        """Precompute the per-model quantities the kernel needs (done once per model set)."""
        root_gamma = np.sqrt(self.gamma)
        sv = self.support_vectors * root_gamma[:, None, None]
        return PreparedOcsvm(
            scaler_mean=np.ascontiguousarray(self.scaler_mean, dtype=np.float64),
            # (x - mean) * (sqrt(gamma) / scale): one subtraction like sklearn, then one multiply.
            scaled_gain=np.ascontiguousarray(root_gamma[:, None] / self.scaler_scale),
            sv_times_two_t=np.ascontiguousarray((2.0 * sv).transpose(0, 2, 1)),
            sv_sq_norm=np.einsum("mvf,mvf->mv", sv, sv),
            dual_coef=np.ascontiguousarray(self.dual_coef, dtype=np.float64),
            n_support=np.asarray(self.n_support, dtype=np.int64),
            intercept=np.asarray(self.intercept, dtype=np.float64),
        )


@dataclass(frozen=True)
class PreparedOcsvm:
    """:class:`OcsvmArrays` rearranged for :func:`ocsvm_decision_function`."""

    scaler_mean: np.ndarray  # (m, f)
    scaled_gain: np.ndarray  # (m, f): sqrt(gamma) / scale
    sv_times_two_t: np.ndarray  # (m, f, v): 2 * sqrt(gamma) * sv, transposed for matmul
    sv_sq_norm: np.ndarray  # (m, v): ||sqrt(gamma) * sv||^2
    dual_coef: np.ndarray  # (m, v)
    n_support: np.ndarray  # (m,)
    intercept: np.ndarray  # (m,)


def ocsvm_decision_function(
    X: np.ndarray,
    params: PreparedOcsvm,
    model_index: np.ndarray | None = None,
    *,
    block_elements: int = BLOCK_ELEMENTS,
) -> np.ndarray:
    """Evaluate each sensor's one-class SVM pipeline on that sensor's buckets.

    Parameters
    ----------
    X : ndarray of shape (n_sensors, n_buckets, n_features)
        Raw (unscaled) features, one matrix per sensor. Must be finite.
    params : PreparedOcsvm
        Parameters of the models (``OcsvmArrays.prepared()``); their feature dimension must
        equal ``n_features``.
    model_index : ndarray of shape (n_sensors,), optional
        Row of `params` holding each sensor's model; default: sensor ``i`` uses model ``i``.
    block_elements : int
        Upper bound on ``sensors * buckets * support_vectors`` evaluated at once.

    Returns
    -------
    ndarray of shape (n_sensors, n_buckets)
        ``decision_function`` of each sensor's model (positive inside the learned region).
    """
    X = np.asarray(X, dtype=np.float64)
    n_sensors, n_buckets, n_features = X.shape
    if model_index is None:
        model_index = np.arange(n_sensors)
    model_index = np.asarray(model_index, dtype=np.int64)
    if params.scaler_mean.shape[1] != n_features:
        raise ValueError(
            f"feature dimension mismatch: models have {params.scaler_mean.shape[1]}, "
            f"data has {n_features}"
        )
    out = np.empty((n_sensors, n_buckets), dtype=np.float64)
    if n_sensors == 0:
        return out
    n_sv = params.n_support[model_index]
    # Sorting by support-vector count lets each block be trimmed to its own maximum.
    by_sv = np.argsort(n_sv, kind="stable")
    start = 0
    while start < n_sensors:
        # Size the block for its first (smallest) support-vector count, then shrink it if the
        # block's last (largest) count would break the element budget.
        v_first = max(int(n_sv[by_sv[start]]), 1)
        stop = min(n_sensors, start + max(1, block_elements // (n_buckets * v_first)))
        v = max(int(n_sv[by_sv[stop - 1]]), 1)
        if v > v_first:
            stop = min(stop, start + max(1, block_elements // (n_buckets * v)))
            v = max(int(n_sv[by_sv[stop - 1]]), 1)
        rows = by_sv[start:stop]
        models = model_index[rows]
        z = X[rows] - params.scaler_mean[models][:, None, :]
        z *= params.scaled_gain[models][:, None, :]
        # kernel = exp(2 z.sv - ||z||^2 - ||sv||^2) = exp(-gamma * ||x_scaled - sv||^2)
        k = np.matmul(z, params.sv_times_two_t[models, :, :v])
        k -= np.einsum("sbf,sbf->sb", z, z)[:, :, None]
        k -= params.sv_sq_norm[models, None, :v]
        np.minimum(k, 0.0, out=k)  # a squared distance is never negative (rounding can say so)
        np.exp(k, out=k)
        out[rows] = (
            np.matmul(k, params.dual_coef[models, :v, None])[:, :, 0]
            + params.intercept[models][:, None]
        )
        start = stop
    return out
