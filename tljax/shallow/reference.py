"""Plain numpy/scipy reference implementations of the shallow methods.

Written from the papers' equations and the authors' published code, in the
most direct form (dense `n x n` MMD matrices, `scipy.linalg.eig` on the
generalised problem, explicit orthogonal complements, matrix functions from
`scipy.linalg`), in float64. They share no code with the JAX implementation
(`methods.py`, `ops.py`) on purpose: the tests compare the two, and the
benchmark times them side by side.

Samples are rows of `(n, m)` arrays at the interface; internally the TCA
family follows the papers' column layout (`X` is `m x n`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from sklearn import neighbors, svm, model_selection


def nearest_neighbor(train_features, train_labels, query_features):
  """sklearn's 1-NN, the classifier of the reference code."""
  model = neighbors.KNeighborsClassifier(n_neighbors=1)
  model.fit(train_features, train_labels)
  return model.predict(query_features)


def _kernel(kind, columns, gamma):
  """`m x n` data (columns = samples) -> the matrix TCA works with."""
  if kind == "primal":
    return columns
  if kind == "linear":
    return columns.T @ columns
  if kind == "rbf":
    sq_norms = np.sum(columns**2, axis=0)
    distances = sq_norms[:, None] + sq_norms[None, :] - 2 * columns.T @ columns
    return np.exp(-gamma * np.maximum(distances, 0))
  raise ValueError(kind)


def _kernel_new(kind, columns, train_columns, gamma):
  if kind == "primal":
    return columns
  if kind == "linear":
    return train_columns.T @ columns
  sq_train = np.sum(train_columns**2, axis=0)
  sq_new = np.sum(columns**2, axis=0)
  distances = sq_train[:, None] + sq_new[None, :] - 2 * train_columns.T @ columns
  return np.exp(-gamma * np.maximum(distances, 0))


def _mmd_solve(X, M, kernel, lamb, gamma, dim):
  """`argmin_A` of the TCA objective for one MMD matrix; returns `(A, Z)`."""
  m, n = X.shape
  M = M / np.linalg.norm(M, "fro")
  H = np.eye(n) - np.ones((n, n)) / n
  K = _kernel(kernel, X, gamma)
  size = m if kernel == "primal" else n
  a = K @ M @ K.T + lamb * np.eye(size)
  b = K @ H @ K.T
  w, V = scipy.linalg.eig(a, b)
  order = np.argsort(w.real)  # infinite eigenvalues (singular b) sort last
  A = np.real(V[:, order[:dim]])
  A = A / np.linalg.norm(A, axis=0)
  Z = A.T @ K
  Z = Z / np.linalg.norm(Z, axis=0)
  return A, Z


def _stacked_columns(source, target):
  X = np.hstack([np.asarray(source, np.float64).T, np.asarray(target, np.float64).T])
  return X / np.linalg.norm(X, axis=0)


def tca(source, target, *, dim=30, lamb=1.0, kernel="primal", gamma=1.0):
  """TCA (Pan et al. 2011). Returns `(source_embedding, target_embedding, A)`."""
  X = _stacked_columns(source, target)
  ns, nt = len(source), len(target)
  e = np.vstack([np.ones((ns, 1)) / ns, -np.ones((nt, 1)) / nt])
  A, Z = _mmd_solve(X, e @ e.T, kernel, lamb, gamma, dim)
  return Z[:, :ns].T, Z[:, ns:].T, A


def tca_transform(x, source, target, A, *, kernel="primal", gamma=1.0):
  """Embeds new samples with a fitted TCA/JDA/BDA projection `A`."""
  columns = np.asarray(x, np.float64).T
  columns = columns / np.linalg.norm(columns, axis=0)
  K = _kernel_new(kernel, columns, _stacked_columns(source, target), gamma)
  Z = A.T @ K
  return (Z / np.linalg.norm(Z, axis=0)).T


def _class_mmd(source_labels, pseudo_labels, classes, ns, nt, target_weight=1.0):
  n = ns + nt
  N = np.zeros((n, n))
  for c in classes:
    e = np.zeros((n, 1))
    in_source = np.where(source_labels == c)[0]
    in_target = np.where(pseudo_labels == c)[0]
    e[in_source] = 1.0 / len(in_source)
    if len(in_target) > 0:
      e[ns + in_target] = -target_weight / len(in_target)
    N += e @ e.T
  return N


def bda(source, source_labels, target, *, dim=30, lamb=1.0, mu=0.5, kernel="primal",
        gamma=1.0, T=10, distance_fn=None, seed=0):  # pylint: disable=invalid-name
  """BDA (Wang et al. 2017) with `M = (1 - mu) M0 + mu sum_c M_c`.

  `mu='auto'` re-estimates it each iteration after the first from proxy
  A-distances of the previous embedding (`estimate_balance_factor`), with
  `distance_fn(source, target, seed=seed)` as the A-distance (default:
  `proxy_a_distance` below).

  Returns:
    `(source_embedding, target_embedding, pseudo_label_history, mu_history, A)`.
  """
  X = _stacked_columns(source, target)
  source_labels = np.asarray(source_labels)
  ns, nt = len(source), len(target)
  classes = np.unique(source_labels)
  e = np.vstack([np.ones((ns, 1)) / ns, -np.ones((nt, 1)) / nt])
  M0 = len(classes) * (e @ e.T)
  pseudo_labels = None
  history, mu_history = [], []
  Zs = Zt = None
  for _ in range(T):
    if pseudo_labels is None:
      current_mu = 0.0 if mu == "auto" else float(mu)
      M = M0
    else:
      if mu == "auto":
        current_mu = estimate_balance_factor(Zs, source_labels, Zt, pseudo_labels,
                                             distance_fn=distance_fn, seed=seed)
      else:
        current_mu = float(mu)
      M = (1 - current_mu) * M0 + current_mu * _class_mmd(
          source_labels, pseudo_labels, classes, ns, nt)
    A, Z = _mmd_solve(X, M, kernel, lamb, gamma, dim)
    Zs, Zt = Z[:, :ns].T, Z[:, ns:].T
    pseudo_labels = nearest_neighbor(Zs, source_labels, Zt)
    history.append(pseudo_labels)
    mu_history.append(current_mu)
  return Zs, Zt, np.stack(history), np.asarray(mu_history), A


def jda(source, source_labels, target, *, dim=30, lamb=1.0, kernel="primal",
        gamma=1.0, T=10):  # pylint: disable=invalid-name
  """JDA (Long et al. 2013), `M = M0 + sum_c M_c` as in the authors' JDA.m.

  Returns:
    `(source_embedding, target_embedding, pseudo_label_history, A)`.
  """
  X = _stacked_columns(source, target)
  source_labels = np.asarray(source_labels)
  ns, nt = len(source), len(target)
  classes = np.unique(source_labels)
  e = np.vstack([np.ones((ns, 1)) / ns, -np.ones((nt, 1)) / nt])
  M0 = len(classes) * (e @ e.T)
  pseudo_labels = None
  history = []
  for _ in range(T):
    M = M0 if pseudo_labels is None else M0 + _class_mmd(
        source_labels, pseudo_labels, classes, ns, nt)
    A, Z = _mmd_solve(X, M, kernel, lamb, gamma, dim)
    Zs, Zt = Z[:, :ns].T, Z[:, ns:].T
    pseudo_labels = nearest_neighbor(Zs, source_labels, Zt)
    history.append(pseudo_labels)
  return Zs, Zt, np.stack(history), A


def proxy_a_distance(source, target, *, seed=0):
  """`2 (1 - 2 err)`, err of a LinearSVC domain classifier on a held-out half."""
  X = np.vstack([source, target])
  y = np.hstack([np.zeros(len(source)), np.ones(len(target))])
  X_train, X_test, y_train, y_test = model_selection.train_test_split(
      X, y, test_size=0.5, stratify=y, random_state=seed)
  classifier = svm.LinearSVC(random_state=0).fit(X_train, y_train)
  error = np.mean(classifier.predict(X_test) != y_test)
  return 2 * (1 - 2 * error)


def balance_factor(global_distance, class_distances):
  """`mu = 1 - d_A / (d_A + sum_c d_c)` (BDA paper, Eq. 6), negatives as 0."""
  d_global = max(global_distance, 0.0)
  d_classes = np.maximum(np.asarray(class_distances, np.float64), 0.0).sum()
  if d_global + d_classes == 0:
    return 0.5
  return min(max(1 - d_global / (d_global + d_classes), 0.0), 1.0)


def estimate_balance_factor(Xs, Ys, Xt, Yt, *, distance_fn=None, seed=0):
  """`mu` from global and per-class A-distances (classes with < 2 samples skipped)."""
  distance_fn = distance_fn or proxy_a_distance
  d_global = distance_fn(Xs, Xt, seed=seed)
  d_classes = []
  for c in np.unique(Ys):
    Xsc, Xtc = Xs[Ys == c], Xt[Yt == c]
    if len(Xsc) >= 2 and len(Xtc) >= 2:
      d_classes.append(distance_fn(Xsc, Xtc, seed=seed))
  return balance_factor(d_global, d_classes)


def coral(source, target):
  """CORAL (Sun et al. 2016): the adapted source `Xs (Cs + I)^-1/2 (Ct + I)^1/2`."""
  source = np.asarray(source, np.float64)
  target = np.asarray(target, np.float64)
  cov_source = np.cov(source.T) + np.eye(source.shape[1])
  cov_target = np.cov(target.T) + np.eye(target.shape[1])
  whiten = scipy.linalg.fractional_matrix_power(cov_source, -0.5)
  recolor = scipy.linalg.fractional_matrix_power(cov_target, 0.5)
  return np.real(source @ whiten @ recolor)


def _pca(X, dim):
  """Top-`dim` principal directions from `eigh` of the covariance."""
  values, vectors = np.linalg.eigh(np.cov(X.T))
  return vectors[:, np.argsort(values)[::-1][:dim]]


def subspace_alignment(source, target, *, dim=30):
  """SA (Fernando et al. 2013). Returns `(source_embedding, target_embedding)`."""
  source = np.asarray(source, np.float64)
  target = np.asarray(target, np.float64)
  Ps, Pt = _pca(source, dim), _pca(target, dim)
  Xa = Ps @ Ps.T @ Pt
  return (source - source.mean(0)) @ Xa, (target - target.mean(0)) @ Pt


def gfk_kernel(source, target, *, dim=20):
  """GFK's `G` (Gong et al. 2012) via the CS decomposition, as `GFK.m` does.

  `Q = [Ps, null(Ps^T)]`; the CS decomposition of the orthogonal
  `Q^T [Pt, null(Pt^T)]` gives `Ps^T Pt = U1 Gamma V^T`,
  `Rs^T Pt = U2 Sigma V^T` (Matlab's `gsvd` with `V2 = -V2` is
  `Rs^T Pt = -U2 Sigma V^T`), and `G = Q Delta1 Delta2 Delta1^T Q^T`.
  """
  source = np.asarray(source, np.float64)
  target = np.asarray(target, np.float64)
  D = source.shape[1]
  Ps, Pt = _pca(source, dim), _pca(target, dim)
  Q = np.hstack([Ps, scipy.linalg.null_space(Ps.T)])
  orthogonal = Q.T @ np.hstack([Pt, scipy.linalg.null_space(Pt.T)])
  u, cs, _ = scipy.linalg.cossin(orthogonal, p=dim, q=dim)
  U1 = u[:dim, :dim]
  # scipy puts the sines in the *last* `dim` rows of the lower block; Gong et
  # al.'s Delta2 wants them first, and their sign: Rs^T Pt = -U2 Sigma V^T.
  lower = u[dim:, dim:]
  U2 = -np.hstack([lower[:, D - 2 * dim:], lower[:, :D - 2 * dim]])
  theta = np.arccos(np.clip(np.diag(cs)[:dim], -1, 1))
  eps = 1e-20
  B1 = 0.5 * np.diag(1 + np.sin(2 * theta) / 2 / np.maximum(theta, eps))
  B2 = 0.5 * np.diag((-1 + np.cos(2 * theta)) / 2 / np.maximum(theta, eps))
  B3 = B2
  B4 = 0.5 * np.diag(1 - np.sin(2 * theta) / 2 / np.maximum(theta, eps))
  delta1 = np.block([[U1, np.zeros((dim, D - dim))],
                     [np.zeros((D - dim, dim)), U2]])
  delta2 = np.block([[B1, B2, np.zeros((dim, D - 2 * dim))],
                     [B3, B4, np.zeros((dim, D - 2 * dim))],
                     [np.zeros((D - 2 * dim, D))]])
  return Q @ delta1 @ delta2 @ delta1.T @ Q.T


def gfk_squared_distances(G, a, b):
  """`(a_i - b_j)^T G (a_i - b_j)` for all pairs, as GFK.m's kernel 1-NN."""
  return (np.einsum("ij,jk,ik->i", a, G, a)[:, None]
          + np.einsum("ij,jk,ik->i", b, G, b)[None, :] - 2 * a @ G @ b.T)


def gfk_predict(G, source, source_labels, target):
  """1-NN in the GFK metric."""
  distances = gfk_squared_distances(G, np.asarray(source, np.float64),
                                    np.asarray(target, np.float64))
  return np.asarray(source_labels)[np.argmin(distances, axis=0)]
