"""Scikit-learn style estimators for the shallow adaptation methods.

    model = TCA(dim=30).fit(source_x, source_y, target_x)
    source_z, target_z = model.source_embedding_, model.target_embedding_
    target_pred = model.predict(target_x)

`fit(source_x, source_y, target_x)` runs the jitted JAX function from
`methods.py`, embeds both domains and trains the classifier (`'1nn'`: JAX
1-nearest-neighbour, the reference protocol; `'logreg'`: sklearn logistic
regression on standardised embeddings) on the embedded source.
`transform(x, domain=...)` embeds new samples: the map is the same for both
domains for TCA/JDA/BDA/GFK, but SA and CORAL treat source and target
differently, so the domain is an argument (target by default, since that is
what one predicts on).

Hyperparameter names and defaults follow the authors' reference code in
jindongwang/transferlearning (`code/traditional/*`) where it exists; each class
says where its defaults come from. Labels may be any values `np.unique` can
sort; target labels are never used by `fit`.
"""

from __future__ import annotations

import numpy as np
import jax.numpy as jnp
from sklearn import linear_model, pipeline, preprocessing

from tljax.shallow import analysis
from tljax.shallow import methods
from tljax.shallow import ops

CLASSIFIERS = ("1nn", "logreg")
DOMAINS = ("source", "target")


class _DomainAdapter:
  """Shared fit/transform/predict plumbing; subclasses implement `_fit`/`_embed`."""

  def __init__(self, classifier: str = "1nn"):
    if classifier not in CLASSIFIERS:
      raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    self.classifier = classifier

  # Subclasses: learn the map from float arrays and 0..C-1 labels.
  def _fit(self, source, source_labels, target):
    raise NotImplementedError

  # Subclasses: embed float array `x` as a sample of `domain`.
  def _embed(self, x, domain):
    raise NotImplementedError

  def fit(self, source_x, source_y, target_x):
    """Learns the adaptation from labelled source and unlabelled target samples.

    Args:
      source_x: `(n_s, m)` source features.
      source_y: `(n_s,)` source labels.
      target_x: `(n_t, m)` target features.

    Returns:
      self, with `source_embedding_`, `target_embedding_` and `classes_` set.
    """
    source = ops.as_float_array(source_x)
    target = ops.as_float_array(target_x)
    if source.shape[1] != target.shape[1]:
      raise ValueError(f"source has {source.shape[1]} features, target {target.shape[1]}")
    self.classes_, source_codes = np.unique(np.asarray(source_y), return_inverse=True)
    if len(source_codes) != len(source):
      raise ValueError(f"{len(source)} source samples but {len(source_codes)} labels")
    self._source_codes = source_codes.astype(np.int32)
    embeddings = self._fit(jnp.asarray(source), jnp.asarray(self._source_codes),
                           jnp.asarray(target))
    if embeddings is None:
      embeddings = (self._embed(source, "source"), self._embed(target, "target"))
    self.source_embedding_, self.target_embedding_ = (
        np.asarray(embedding) for embedding in embeddings)
    self._fit_classifier()
    return self

  def _fit_classifier(self):
    if self.classifier == "logreg":
      self._logreg = pipeline.make_pipeline(
          preprocessing.StandardScaler(),
          linear_model.LogisticRegression(max_iter=2000))
      self._logreg.fit(self.source_embedding_, self._source_codes)

  def set_classifier(self, classifier: str):
    """Switches the classifier, refitting only it on the stored source embedding."""
    if classifier not in CLASSIFIERS:
      raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    self.classifier = classifier
    if hasattr(self, "classes_"):
      self._fit_classifier()
    return self

  def _check_fitted(self):
    if not hasattr(self, "classes_"):
      raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")

  def transform(self, x, domain: str = "target") -> np.ndarray:
    """Embeds samples of `domain` ('source' or 'target') with the fitted map."""
    self._check_fitted()
    if domain not in DOMAINS:
      raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    return np.asarray(self._embed(ops.as_float_array(x), domain))

  def fit_transform(self, source_x, source_y, target_x) -> tuple[np.ndarray, np.ndarray]:
    """`fit`, then the `(source_embedding, target_embedding)` of the training samples."""
    self.fit(source_x, source_y, target_x)
    return self.source_embedding_, self.target_embedding_

  def _predict_codes(self, target_embedding) -> np.ndarray:
    if self.classifier == "1nn":
      return np.asarray(ops.nearest_neighbor_predict(
          jnp.asarray(self.source_embedding_), jnp.asarray(self._source_codes),
          jnp.asarray(target_embedding, self.source_embedding_.dtype)))
    return self._logreg.predict(np.asarray(target_embedding))

  def predict(self, target_x) -> np.ndarray:
    """Labels for target samples, from the classifier trained on the embedded source."""
    self._check_fitted()
    return self.classes_[self._predict_codes(self.transform(target_x, "target"))]

  def score(self, target_x, target_y) -> float:
    """Accuracy of `predict(target_x)` against `target_y`."""
    return float(np.mean(self.predict(target_x) == np.asarray(target_y)))

  def get_params(self) -> dict:
    """Constructor arguments, for logging (a subset of sklearn's protocol)."""
    return {name: getattr(self, name) for name in self._param_names}

  _param_names = ("classifier",)

  def __repr__(self):
    params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
    return f"{type(self).__name__}({params})"


class NoAdaptation(_DomainAdapter):
  """The baseline: the classifier on raw features, both domains unchanged."""

  def _fit(self, source, source_labels, target):
    return source, target

  def _embed(self, x, domain):
    return x


class _KernelProjectionAdapter(_DomainAdapter):
  """TCA/JDA/BDA: one map for both domains, `methods.kernel_project`."""

  _param_names = ("dim", "lamb", "kernel", "gamma", "classifier")

  def _store(self, fitted: methods.KernelProjection, num_source: int):
    self.projection_ = fitted.projection
    self.eigenvalues_ = np.asarray(fitted.eigenvalues)
    self._features = fitted.features
    embedding = fitted.embedding
    return embedding[:num_source], embedding[num_source:]

  def _embed(self, x, domain):
    return methods.kernel_project(jnp.asarray(x), self._features, self.projection_,
                                  kernel=self.kernel, gamma=self.gamma)


class TCA(_KernelProjectionAdapter):
  """Transfer Component Analysis (Pan et al., IEEE TNN 2011).

  Finds `dim` directions (linear in the features for `kernel='primal'`,
  in an RBF/linear kernel space otherwise) that shrink the MMD between the
  domains' means while keeping the data's variance. Samples are unit-normalised
  before and after the projection, as in the reference.

  Defaults are those of `TCA.py` in jindongwang/transferlearning
  (`kernel_type='primal', dim=30, lamb=1, gamma=1`; `kernel` here is its
  `kernel_type`).

  Args:
    dim: number of transfer components (at most the number of features for
      'primal', of training samples otherwise).
    lamb: regulariser `lamb` in `(K M K^T + lamb I)`.
    kernel: 'primal', 'linear' or 'rbf'.
    gamma: RBF bandwidth, `exp(-gamma ||x - y||^2)` on unit-norm samples.
    classifier: '1nn' or 'logreg'.
  """

  def __init__(self, dim: int = 30, lamb: float = 1.0, kernel: str = "primal",
               gamma: float = 1.0, classifier: str = "1nn"):
    super().__init__(classifier)
    self.dim, self.lamb, self.kernel, self.gamma = dim, lamb, kernel, gamma

  def _fit(self, source, source_labels, target):
    fitted = methods.transfer_component_analysis(
        source, target, dim=self.dim, lamb=self.lamb, kernel=self.kernel,
        gamma=self.gamma)
    return self._store(fitted, source.shape[0])


class JDA(_KernelProjectionAdapter):
  """Joint Distribution Adaptation (Long et al., ICCV 2013).

  TCA plus one MMD term per class, with target classes from 1-NN
  pseudo-labels that are refreshed for `T` iterations.

  Defaults are those of `JDA.py` in jindongwang/transferlearning
  (`kernel_type='primal', dim=30, lamb=1, gamma=1, T=10`). The MMD matrix of
  each iteration is `M0 + sum_c M_c`, as in the authors' `JDA.m`; the Python
  port accumulates `M` across iterations (`M += N`), which we take to be a
  slip.

  Attributes (after fit):
    pseudo_labels_: `(T, n_t)` target pseudo-labels after each iteration.
  """

  _param_names = ("dim", "lamb", "kernel", "gamma", "T", "classifier")

  def __init__(self, dim: int = 30, lamb: float = 1.0, kernel: str = "primal",
               gamma: float = 1.0, T: int = 10, classifier: str = "1nn"):  # pylint: disable=invalid-name
    super().__init__(classifier)
    self.dim, self.lamb, self.kernel, self.gamma, self.T = dim, lamb, kernel, gamma, T

  def _weights(self):
    return 1.0, 1.0

  def _fit(self, source, source_labels, target):
    marginal_weight, conditional_weight = self._weights()
    fitted = methods.joint_distribution_adaptation(
        source, source_labels, target, num_classes=len(self.classes_), dim=self.dim,
        lamb=self.lamb, kernel=self.kernel, gamma=self.gamma, iterations=self.T,
        marginal_weight=marginal_weight, conditional_weight=conditional_weight)
    self.pseudo_labels_ = self.classes_[np.asarray(fitted.pseudo_labels)]
    return self._store(fitted, source.shape[0])


class BDA(JDA):
  """Balanced Distribution Adaptation (Wang et al., ICDM 2017).

  JDA with the MMD matrix `(1 - mu) M0 + mu sum_c M_c`: `mu -> 0` aligns only
  the marginal distributions (TCA), `mu -> 1` only the class conditionals.
  With `mu='auto'`, each iteration after the first sets `mu` from proxy
  A-distances of the previous iteration's embedding,
  `mu = 1 - d_global / (d_global + sum_c d_c)` (paper Eq. 6; see
  `analysis.balance_factor`), with target classes from the pseudo-labels.
  That needs sklearn between iterations, so the auto mode loops on the host
  over jitted steps; a fixed `mu` runs the whole loop on the device.

  Defaults are those of `BDA.py` in jindongwang/transferlearning
  (`kernel_type='primal', dim=30, lamb=1, mu=0.5, gamma=1, T=10`);
  `mu='auto'` replaces its `estimate_mu=True`. Its 'WBDA' mode is not
  implemented.

  Args:
    mu: balance factor in `[0, 1]`, or 'auto'.
    seed: seed of the A-distance train/test splits (only used by 'auto').

  Attributes (after fit):
    mu_: the balance factor of the last iteration.
    mu_history_: `(T,)` balance factor of each iteration (the first is 0 for
      'auto': without pseudo-labels there is nothing conditional to weigh).
  """

  _param_names = ("dim", "lamb", "mu", "kernel", "gamma", "T", "seed", "classifier")

  def __init__(self, dim: int = 30, lamb: float = 1.0, mu: float | str = 0.5,
               kernel: str = "primal", gamma: float = 1.0, T: int = 10,  # pylint: disable=invalid-name
               seed: int = 0, classifier: str = "1nn"):
    super().__init__(dim=dim, lamb=lamb, kernel=kernel, gamma=gamma, T=T,
                     classifier=classifier)
    if mu != "auto" and (isinstance(mu, str) or not 0.0 <= float(mu) <= 1.0):
      raise ValueError(f"mu must be in [0, 1] or 'auto', got {mu!r}")
    self.mu = mu
    self.seed = seed

  def _weights(self):
    return 1.0 - float(self.mu), float(self.mu)

  def _fit(self, source, source_labels, target):
    if self.mu != "auto":
      self.mu_ = float(self.mu)
      self.mu_history_ = np.full((self.T,), self.mu_)
      return super()._fit(source, source_labels, target)
    return self._fit_auto(source, source_labels, target)

  def _fit_auto(self, source, source_labels, target):
    num_source = source.shape[0]
    features, basis, scatter = methods.joint_basis(
        source, target, kernel=self.kernel, gamma=self.gamma)
    pseudo_labels = jnp.zeros((target.shape[0],), jnp.int32)
    source_codes = np.asarray(source_labels)
    mu, history, mu_history = 0.0, [], []
    for iteration in range(self.T):
      if iteration > 0:
        mu, _, _ = analysis.estimate_balance_factor(
            embedding[:num_source], source_codes, embedding[num_source:],
            np.asarray(pseudo_labels), seed=self.seed)
      conditional = mu if iteration > 0 else 0.0
      values, projection, embedding, pseudo_labels = methods.joint_iteration(
          basis, scatter, source_labels, pseudo_labels,
          marginal_weight=1.0 - conditional, conditional_weight=conditional,
          num_classes=len(self.classes_), dim=self.dim, lamb=self.lamb)
      embedding = np.asarray(embedding)
      history.append(np.asarray(pseudo_labels))
      mu_history.append(mu)
    self.mu_ = float(mu)
    self.mu_history_ = np.asarray(mu_history)
    self.pseudo_labels_ = self.classes_[np.stack(history)]
    fitted = methods.KernelProjection(features, projection, jnp.asarray(embedding),
                                      values, jnp.asarray(np.stack(history)))
    return self._store(fitted, num_source)


class CORAL(_DomainAdapter):
  """CORrelation ALignment (Sun et al., AAAI 2016).

  Source features are whitened with `(C_s + lamb I)^-1/2` and re-coloured with
  `(C_t + lamb I)^1/2`; target features are used as they are. `lamb=1` is the
  paper's (and `CORAL.py`'s) identity regulariser; the reference class has no
  other hyperparameters.
  """

  _param_names = ("lamb", "classifier")

  def __init__(self, lamb: float = 1.0, classifier: str = "1nn"):
    super().__init__(classifier)
    self.lamb = lamb

  def _fit(self, source, source_labels, target):
    self.transform_matrix_ = methods.coral(source, target, self.lamb)
    return None

  def _embed(self, x, domain):
    if domain == "target":
      return x
    return ops.matmul(jnp.asarray(x), self.transform_matrix_)


class SA(_DomainAdapter):
  """Subspace Alignment (Fernando et al., ICCV 2013).

  Source samples are projected on the source PCA basis and mapped onto the
  target basis by `M = P_s^T P_t`; target samples are projected on the target
  basis. The reference repository has no Python SA (its `SA_SVM.m` takes the
  bases as inputs), so `dim=30` follows the TCA/JDA default.

  Args:
    dim: subspace dimension (at most `min(n_s, n_t, m)`).
  """

  _param_names = ("dim", "classifier")

  def __init__(self, dim: int = 30, classifier: str = "1nn"):
    super().__init__(classifier)
    self.dim = dim

  def _fit(self, source, source_labels, target):
    _check_subspace_dim(self.dim, source, target)
    self.alignment_ = methods.subspace_alignment(source, target, dim=self.dim)
    return None

  def _embed(self, x, domain):
    fitted = self.alignment_
    if domain == "source":
      return ops.matmul(jnp.asarray(x) - fitted.source_mean, fitted.source_map)
    return ops.matmul(jnp.asarray(x) - fitted.target_mean, fitted.target_basis)


class GFK(_DomainAdapter):
  """Geodesic Flow Kernel (Gong et al., CVPR 2012).

  Integrates the projections onto all subspaces on the Grassmann geodesic
  from the source to the target PCA subspace (closed form); distances in the
  resulting metric `G` are what the 1-NN uses. `transform` returns the
  `2 dim`-dimensional features whose Euclidean distances are the GFK
  distances. `dim=20` is `GFK.py`'s default (the paper asks for
  `dim <= m / 2`).

  Attributes (after fit):
    principal_angles_: `(dim,)` angles between the subspaces, radians.
  """

  _param_names = ("dim", "classifier")

  def __init__(self, dim: int = 20, classifier: str = "1nn"):
    super().__init__(classifier)
    self.dim = dim

  def _fit(self, source, source_labels, target):
    _check_subspace_dim(self.dim, source, target)
    self.flow_ = methods.geodesic_flow_kernel(source, target, dim=self.dim)
    self.principal_angles_ = np.asarray(self.flow_.principal_angles)
    return None

  @property
  def kernel_(self) -> np.ndarray:
    """The `(m, m)` geodesic flow kernel `G`."""
    embedding_map = np.asarray(self.flow_.embedding_map)
    return embedding_map @ embedding_map.T

  def _embed(self, x, domain):
    return ops.matmul(jnp.asarray(x), self.flow_.embedding_map)


def _check_subspace_dim(dim, source, target):
  limit = min(source.shape[0], target.shape[0], source.shape[1])
  if not 1 <= dim <= limit:
    raise ValueError(f"dim={dim} must be between 1 and {limit} "
                     "(min of the sample counts and the number of features)")


METHODS = {
    "none": NoAdaptation,
    "tca": TCA,
    "jda": JDA,
    "bda": BDA,
    "coral": CORAL,
    "sa": SA,
    "gfk": GFK,
}
