"""Mixture parameters as an immutable pytree."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gmmjax._src import cov_lowrank
from gmmjax._src import covariance as cov_ops

COVARIANCE_TYPES = cov_ops.COVARIANCE_TYPES
ALL_TYPES = cov_ops.ALL_TYPES


class ComponentArrays:
  """What a mixture's parameter pytrees share (:class:`GMMParams`, the
  Bayesian posterior): a ``means`` leaf of shape ``(..., K, D)``."""

  def replace(self, **kwargs):
    """Returns a copy with the given fields replaced."""
    return dataclasses.replace(self, **kwargs)

  def _slot_weights(self, mask):
    """The weights of the active component slots (``mask``), 0 in the
    others: a slotted fit's own weights (``stats.mask_components`` keeps
    them so); a posterior computes its own."""
    del mask
    return self.weights

  @property
  def n_components(self) -> int:
    return self.means.shape[-2]

  @property
  def n_features(self) -> int:
    return self.means.shape[-1]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["weights", "means", "covariances", "precisions_cholesky"],
    meta_fields=["covariance_type"])
@dataclasses.dataclass(frozen=True)
class GMMParams(ComponentArrays):
  """Parameters of a Gaussian mixture: a pytree with a static covariance type.

  Array leaves (scikit-learn's shapes and conventions)::

    weights              (K,)        mixture weights, summing to 1
    means                (K, D)      component means
    covariances          full (K, D, D) | tied (D, D) | diag (K, D) | spherical (K,)
                         | lowrank (K, D, q + 1): loadings W and noise psi
                         packed [W | psi], Sigma = W W^T + diag(psi)
    precisions_cholesky  same shape as ``covariances``: a factor ``P`` with
                         ``P @ P.T == inv(covariance)`` (full/tied), or
                         ``1 / sqrt(variance)`` (diag/spherical); lowrank:
                         the packed Woodbury factors (K, D + 2q, q + 1)
                         (``cov_lowrank.py``)

  ``covariance_type`` is auxiliary data, not a leaf, so ``jit`` treats it as
  static and a batch of parameters (one leading axis on every leaf, as made by
  ``jax.vmap(gx.init_params)``) is the same pytree type.

  Build it with :func:`make_params` (which computes the precision factors) or
  get it from :func:`gmmjax.init_params`, :func:`gmmjax.m_step`,
  :func:`gmmjax.fit`.
  """

  weights: Any
  means: Any
  covariances: Any
  precisions_cholesky: Any
  covariance_type: str = "full"

  def recompute_factors(self) -> GMMParams:
    """The same parameters with ``precisions_cholesky`` derived from
    ``covariances`` again.

    The factors are a second representation of the covariances, so
    arithmetic on the leaves (``jax.tree.map`` averaging or interpolating
    two parameter sets) leaves them inconsistent; the functional entry
    points refuse such parameters with a ``ValueError`` (outside ``jit``)
    and this method makes them canonical again.

    Example:
      >>> import jax, jax.numpy as jnp, gmmjax as gx
      >>> a = gx.make_params(jnp.ones(1), jnp.zeros((1, 1)), jnp.ones((1, 1)),
      ...                    covariance_type="diag")
      >>> b = a.replace(covariances=4 * a.covariances,
      ...               precisions_cholesky=a.precisions_cholesky / 2)
      >>> mid = jax.tree.map(lambda u, v: (u + v) / 2, a, b)
      >>> mid.precisions_cholesky.tolist()  # not 1 / sqrt(2.5)
      [[0.75]]
      >>> mid.recompute_factors().precisions_cholesky.tolist()
      [[0.6324555...]]
    """
    return make_params(self.weights, self.means, self.covariances,
                       covariance_type=self.covariance_type, dtype=self.dtype)

  @property
  def dtype(self):
    return self.means.dtype

  @property
  def rank(self) -> int | None:
    """The number of factors ``q`` of ``"lowrank"`` params, else ``None``."""
    if self.covariance_type != cov_lowrank.NAME:
      return None
    return cov_lowrank.rank_of(self.covariances)

  @property
  def loadings(self):
    """``"lowrank"``: the loadings ``W`` ``(K, D, q)``."""
    self._need_lowrank("loadings")
    return cov_lowrank.loadings(self.covariances)

  @property
  def noise(self):
    """``"lowrank"``: the diagonal noise ``psi`` ``(K, D)``."""
    self._need_lowrank("noise")
    return cov_lowrank.noise(self.covariances)

  @property
  def dense_covariances(self):
    """Covariances in scikit-learn's shapes; ``"lowrank"``: the dense
    ``W W^T + diag(psi)`` ``(K, D, D)``, computed here (the fit never forms
    it)."""
    if self.covariance_type != cov_lowrank.NAME:
      return self.covariances
    return cov_lowrank.dense_covariances(self.covariances)

  def covariance_matrices(self) -> np.ndarray:
    """Every component's covariance as a NumPy ``(K, D, D)`` matrix,
    whatever the type (tied repeated, diagonal and spherical expanded, low
    rank formed densely): computed on the host, for plots and inspection
    (not under ``jit``).

    Example:
      >>> import jax.numpy as jnp, gmmjax as gx
      >>> p = gx.make_params(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)),
      ...                    jnp.array([1.0, 4.0]),
      ...                    covariance_type="spherical")
      >>> p.covariance_matrices()[1].tolist()
      [[4.0, 0.0], [0.0, 4.0]]
    """
    k, d = np.shape(self.means)[-2:]
    return cov_ops.get(self.covariance_type).dense(
        np.asarray(self.covariances), k, d)

  def _need_lowrank(self, what: str) -> None:
    if self.covariance_type != cov_lowrank.NAME:
      raise AttributeError(f"{what} are those of covariance_type='lowrank' "
                           f"params, not {self.covariance_type!r}.")

  @property
  def precisions(self):
    """Precision matrices (inverse covariances) in scikit-learn's shapes."""
    return cov_ops.precisions_from_cholesky(self.precisions_cholesky,
                                            self.covariance_type)

  def __repr__(self) -> str:
    """Values where they are concrete (abridged as NumPy abridges), shapes
    and dtypes where they are traced (inside ``jit``, ``vmap``, ``grad``)."""
    def field(name):
      a = getattr(self, name)
      if isinstance(a, jax.core.Tracer) or not hasattr(a, "shape"):
        return f"{name}=<{getattr(a, 'dtype', '?')}{list(getattr(a, 'shape', ()))}>"
      text = np.array2string(np.asarray(a), precision=4, threshold=24,
                             edgeitems=2, separator=", ")
      return f"{name}=" + text.replace("\n", "\n" + " " * (len(name) + 3))
    dtype = getattr(self.means, "dtype", None)
    body = ",\n  ".join(field(n) for n in ("weights", "means", "covariances"))
    text = (f"GMMParams(covariance_type={self.covariance_type!r}, "
            f"dtype={dtype}, n_components={self.n_components}, "
            f"n_features={self.n_features},\n  {body})")
    return "\n".join(line.rstrip() for line in text.split("\n"))


def _given_rank(covariance_type: str, given, n_features: int):
  """The low-rank ``q`` of given packed covariances (else ``None``)."""
  if covariance_type != cov_lowrank.NAME:
    return None
  if given.ndim != 3 or not 1 <= given.shape[-1] - 1 < n_features:
    raise ValueError(
        "covariances for covariance_type='lowrank' are (loadings, noise) of "
        "shapes (K, D, q) and (K, D), or packed [W | psi] of shape (K, D, "
        f"q + 1) with 1 <= q < D = {n_features}; got shape {given.shape}.")
  return given.shape[-1] - 1


def check_covariance_type(covariance_type: str) -> None:
  if covariance_type not in ALL_TYPES:
    raise ValueError(
        f"Invalid value for 'covariance_type': {covariance_type!r}. "
        f"'covariance_type' should be in {list(ALL_TYPES)}.")


def make_params(weights, means, covariances=None, *,
                covariance_type: str = "full", precisions=None, dtype=None) -> GMMParams:
  """Builds :class:`GMMParams` from weights, means and covariances.

  Exactly one of ``covariances`` and ``precisions`` (inverse covariances, in
  the same shapes) is given. The precision Cholesky factors are computed here
  once, by Cholesky decomposition, never by an explicit inverse.

  Args:
    weights: ``(K,)`` mixture weights.
    means: ``(K, D)`` component means.
    covariances: full ``(K, D, D)``, tied ``(D, D)``, diag ``(K, D)``,
      spherical ``(K,)``; lowrank the pair ``(loadings (K, D, q), noise (K,
      D))`` or both packed ``[W | psi]`` ``(K, D, q + 1)``.
    covariance_type: one of ``"full"``, ``"tied"``, ``"diag"``,
      ``"spherical"``, ``"lowrank"``.
    precisions: alternative to ``covariances``, same shapes.
    dtype: floating dtype of the leaves; defaults to that of ``means`` (or
      JAX's default float for integer input).

  Returns:
    A :class:`GMMParams`.

  Example:
    >>> import jax.numpy as jnp, gmmjax as gx
    >>> p = gx.make_params(jnp.array([0.5, 0.5]), jnp.array([[0.0], [3.0]]),
    ...                    jnp.array([1.0, 4.0]), covariance_type="spherical")
    >>> p.precisions_cholesky.tolist()
    [1.0, 0.5]
  """
  check_covariance_type(covariance_type)
  if (covariances is None) == (precisions is None):
    raise ValueError("make_params needs exactly one of `covariances` and "
                     "`precisions`.")
  means = jnp.asarray(means)
  if dtype is None:
    dtype = means.dtype if jnp.issubdtype(means.dtype, jnp.floating) else (
        jnp.result_type(float))
  means = means.astype(dtype)
  weights = jnp.asarray(weights, dtype)
  if means.ndim != 2:
    raise ValueError(f"`means` should have shape (n_components, n_features), "
                     f"got {means.shape}.")
  n_components, n_features = means.shape
  if weights.shape != (n_components,):
    raise ValueError(f"`weights` should have shape ({n_components},), got "
                     f"{weights.shape}.")
  if covariance_type == cov_lowrank.NAME and isinstance(covariances, tuple):
    covariances = cov_lowrank.pack(*(jnp.asarray(a, dtype)
                                     for a in covariances))
  given = covariances if precisions is None else precisions
  given = jnp.asarray(given, dtype)
  rank = _given_rank(covariance_type, given, n_features)
  expected = cov_ops.covariance_shape(covariance_type, n_components,
                                      n_features, rank)
  if given.shape != expected:
    name = "covariances" if precisions is None else "precisions"
    raise ValueError(f"`{name}` for covariance_type={covariance_type!r} should "
                     f"have shape {expected}, got {given.shape}.")
  if precisions is None:
    covariances = given
    prec_chol = cov_ops.precision_cholesky(covariances, covariance_type)
  else:
    prec_chol = cov_ops.precision_cholesky_from_precisions(given,
                                                           covariance_type)
    covariances = cov_ops.covariances_from_cholesky(prec_chol, covariance_type)
  return GMMParams(weights, means, covariances, prec_chol, covariance_type)


def all_finite(tree) -> jax.Array:
  """Scalar bool: every value of every leaf of ``tree`` is finite.

  The EM loops' check that a step kept parameters (or statistics) usable.
  """
  ok = jnp.ones((), bool)
  for leaf in jax.tree.leaves(tree):
    ok = ok & jnp.all(jnp.isfinite(leaf))
  return ok
