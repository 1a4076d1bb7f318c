r"""Per-time-step disentanglement: which group of latent dimensions (time step) carries which factor of variation.

Pure NumPy, gin-free, no TensorFlow. The codes are posterior means, `[N, D]` flat with T group slices (time step t
= the contiguous slice t of z, `crvae_tf.models.latent_steps.step_slices`; for the VAE and cVAE the same channel
slices of T = 8) or `[N, T, D_t]`. The factors are `[N, K]` with one kind per factor:

* 'discrete': class labels (any values; compared for equality), e.g. the sprites' shape or a CelebA attribute.
* 'continuous': a real value, e.g. scale or position.
* 'angle': an angle in radians on the full circle, regressed as (cos a, sin a). A rotation that is identifiable
  only modulo a symmetry of order m (the sprites: a square looks the same turned by 90 degrees, m = 4; a triangle
  m = 3; an ellipse m = 2; a heart m = 1) is passed as a = m * rotation (`symmetry_reduced_angle`): images that
  look the same get the same a, so no encoder is asked to separate what the pixels cannot.

Every score comes from held-out *linear probes* (predictor-based metrics extend to groups of dimensions most
cleanly; Carbonneau et al. 2022, "Measuring disentanglement: a review of metrics", arXiv 2012.09276): a probe is fitted
on (codes_train, factors_train) and scored on (codes_test, factors_test). The inputs of a probe are whitened on the
training codes (PCA; directions with variance below `RELATIVE_RANK_TOLERANCE` of the largest, e.g. collapsed units,
are dropped), so 128 or 1,024 dimensions need no feature scaling. The penalty lambda of each probe is chosen from
`L2_GRID` by the loss (squared error, cross-entropy) on the last `VALIDATION_FRACTION` of the training codes, then the
probe is refitted on all of them with it (logistic fits warm-started along the path from the largest lambda down):
uninformative groups (inactive units: pure noise in posterior samples) would otherwise be overfitted.

* Continuous and angle factors: ridge regression, closed form, w = (F^T F + lambda N I)^{-1} F^T y on the whitened
  features F (bias unpenalised); score R^2 = 1 - sum (y - yhat)^2 / sum (y - mean_test y)^2, summed over the two
  columns of an angle; clipped at 0 (a probe worse than the mean says nothing).
* Discrete factors: multinomial logistic regression, L2 penalty lambda / 2 ||W||^2, full-batch Nesterov gradient
  descent for `LOGISTIC_STEPS` steps (fewer once every gradient entry is below `LOGISTIC_TOLERANCE`) at step size
  1 / (1/2 + lambda) (the softmax loss of whitened features has curvature at most 1/2). Its held-out cross-entropy
  CE = -mean log p(v | z) bounds the mutual information from below (Barber & Agakov 2003): I(z; v) >= H(v) - CE,
  H the entropy of the test labels (plug-in). Score: the fraction of the factor's entropy explained, (H - CE) / H,
  clipped at 0; also the accuracy.

The matrices (T groups x K factors; `group_factor_scores`):

* `explained[t, k]`: the score of a probe on z_t alone, in [0, 1]: R^2 (continuous, angle) or (H - CE) / H
  (discrete). The factor-by-time-step table.
* `sap_score[t, k]`: accuracy (discrete) or R^2 (otherwise) of the same probe, Kumar et al.'s SAP score.
* `information[t, k]`: I(z_t; v_k) >= H(v_k) - CE in nats, continuous and angle factors discretised into
  `num_bins` equal-frequency bins of the training values (the discretisation MIG needs for continuous factors).
* `importance[t, k]`: group permutation importance in the probe on all of z: the mean drop of its held-out score
  (as `explained`) when z_t alone is shuffled across the test images (`num_permutations` shuffles), clipped at 0
  (Breiman 2001; one whole group shuffled at once, so correlated dimensions inside a group are not split; the same
  shuffles for every group).

The metrics (`disentanglement_metrics`), group forms of the standard ones with each time step as one "code":

* MIG (Chen et al. 2018, "Isolating sources of disentanglement in VAEs"): per factor the gap between the largest
  and second-largest I(z_t; v_k), divided by H(v_k); averaged over factors. In [0, 1].
* SAP (Kumar et al. 2018, "Variational inference of disentangled latent concepts from unlabeled observations"):
  per factor the gap between the two largest `sap_score[:, k]`; averaged over factors.
* DCI (Eastwood & Williams 2018, "A framework for the quantitative evaluation of disentangled representations"),
  from R = `importance`: P[t, k] = R[t, k] / sum_k R[t, k]; disentanglement D_t = 1 - H_K(P[t, :]) (entropy base
  K), D = sum_t rho_t D_t with rho_t = sum_k R[t, k] / sum R; completeness C_k = 1 - H_T(R[:, k] / sum_t R[t, k])
  (base T), C = sum_k (sum_t R[t, k] / sum R) C_k (weighted by factor as in disentanglement_lib); informativeness:
  the held-out score of the probe on all of z, per factor and its mean. A group with no importance counts
  nothing; with no importance anywhere D = C = 0.

The intervention matrix (paper Fig. 5's style redraws, measured): `FactorProbes` predict every factor from all of
z; a caller resamples z_t alone, decodes, encodes again and compares the probes' outputs with those of the unchanged
z through the same decode-encode round trip (`intervention_effects`: the total-variation distance of a discrete
factor's predicted distribution, the change of a continuous one): entry [t, k] is how far factor k moved when only
z_t changed.

Each metric needs T >= 2 groups (a gap of one group is undefined) and D needs K >= 2 factors.
"""

from typing import Optional
from typing import Sequence

import numpy as np

FACTOR_KINDS = ("discrete", "continuous", "angle")
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
VALIDATION_FRACTION = 0.2
LOGISTIC_STEPS = 300
LOGISTIC_TOLERANCE = 1e-4  # stop early when every gradient entry is below this
NUM_BINS = 10
NUM_PERMUTATIONS = 3
RELATIVE_RANK_TOLERANCE = 1e-6


# --------------------------------------------------------------------------------------------- inputs


def code_groups(codes, slices=None) -> list:
    """The T groups of a code: a list of float64 `[N, D_t]` arrays.

    Args:
      codes: `[N, T, D_t]`, or `[N, D]` with `slices`.
      slices: T `(start, stop)` ranges of the flat code (`latent_steps.step_slices`); with `[N, T, D_t]` codes,
        None.
    """
    codes = np.asarray(codes, np.float64)
    if codes.ndim == 3:
        if slices is not None:
            raise ValueError("codes are [N, T, D_t] already: pass slices=None.")
        return [codes[:, t] for t in range(codes.shape[1])]
    if codes.ndim != 2 or slices is None:
        raise ValueError(f"codes must be [N, T, D_t], or [N, D] with slices; got shape {list(codes.shape)}.")
    groups = []
    for start, stop in slices:
        if not 0 <= int(start) < int(stop) <= codes.shape[1]:
            raise ValueError(f"slice ({start}, {stop}) is not inside the code's {codes.shape[1]} dimensions.")
        groups.append(codes[:, int(start) : int(stop)])
    return groups


def symmetry_reduced_angle(rotation, symmetry_order) -> np.ndarray:
    """m * rotation wrapped to (-pi, pi]: equal for two rotations that differ by a multiple of 2 pi / m.

    Args:
      rotation: `[N]` radians.
      symmetry_order: `[N]` (or scalar) ints m >= 1, the order of each shape's rotational symmetry.
    """
    angle = np.asarray(symmetry_order, np.float64) * np.asarray(rotation, np.float64)
    return np.angle(np.exp(1j * angle))


def _check_factors(factors, kinds, num_codes):
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[0] != num_codes:
        raise ValueError(f"factors must be [N={num_codes}, K], got shape {list(factors.shape)}.")
    kinds = list(kinds)
    if len(kinds) != factors.shape[1] or any(kind not in FACTOR_KINDS for kind in kinds):
        raise ValueError(
            f"kinds={kinds} must name one of {list(FACTOR_KINDS)} for each of the {factors.shape[1]} factors."
        )
    return factors, kinds


# --------------------------------------------------------------------------------------------- probes


class _Whitener:
    """x -> [(x - mean) V diag(1 / sqrt(eigenvalue)), 1] on the training codes' principal directions."""

    def __init__(self, x):
        self.mean = x.mean(axis=0)
        centred = x - self.mean
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / len(x))
        keep = eigenvalues > RELATIVE_RANK_TOLERANCE * max(float(eigenvalues.max(initial=0.0)), 1e-300)
        self.projection = vectors[:, keep] / np.sqrt(eigenvalues[keep])
        self.rank = int(keep.sum())

    def __call__(self, x):
        features = (x - self.mean) @ self.projection
        return np.concatenate([features, np.ones((len(x), 1))], axis=1)


def _ridge(features, targets, l2):
    """Closed-form ridge weights `[F+1, m]`, the bias (last feature) unpenalised."""
    penalty = np.full(features.shape[1], l2 * len(features))
    penalty[-1] = 0.0
    gram = features.T @ features + np.diag(penalty)
    return np.linalg.solve(gram, features.T @ targets)


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _logistic(features, labels, num_classes, l2, steps, init=None):
    """Multinomial logistic weights `[F+1, C]` by Nesterov-accelerated full-batch gradient descent (module docstring)
    from `init` (default: zero weights, biases at the training class log-frequencies, the best constant predictor);
    the bias (last feature) is unpenalised."""
    onehot = np.eye(num_classes)[labels]
    if init is None:
        weights = np.zeros((features.shape[1], num_classes))
        frequencies = (onehot.sum(axis=0) + 1.0) / (len(labels) + num_classes)
        weights[-1] = np.log(frequencies)
    else:
        weights = np.array(init, np.float64)
    mask = np.ones((features.shape[1], 1))
    mask[-1] = 0.0
    rate = 1.0 / (0.5 + l2)
    previous = weights.copy()
    for step in range(1, int(steps) + 1):
        look = weights + (step - 1.0) / (step + 2.0) * (weights - previous)
        probabilities = np.exp(_log_softmax(features @ look))
        gradient = features.T @ (probabilities - onehot) / len(labels) + l2 * mask * look
        previous, weights = weights, look - rate * gradient
        if np.abs(gradient).max() < LOGISTIC_TOLERANCE:
            break
    return weights


def _entropy(labels, num_classes):
    """Plug-in entropy, nats, of int labels."""
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _encode_classes(train_values, test_values):
    """Int labels over the union of the values seen in train and test."""
    classes, inverse = np.unique(np.concatenate([train_values, test_values]), return_inverse=True)
    return inverse[: len(train_values)], inverse[len(train_values) :], len(classes)


def _bin_edges(values, num_bins):
    """Inner edges of `num_bins` equal-frequency bins of the training values (duplicates merged)."""
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, num_bins + 1)[1:-1]))


class _FactorTargets:
    """One factor's probe targets on the train and test codes: the regression targets (continuous, angle) or the
    class labels (discrete), and the class labels of its discretisation (for the information)."""

    def __init__(self, train_values, test_values, kind, num_bins):
        self.kind = kind
        train_values = np.asarray(train_values)
        test_values = np.asarray(test_values)
        if kind == "discrete":
            self.labels = _encode_classes(train_values, test_values)
            self.bins = self.labels
            self.classes = np.unique(np.concatenate([train_values, test_values]))
            return
        train_values = train_values.astype(np.float64)
        test_values = test_values.astype(np.float64)
        if kind == "angle":
            self.targets = tuple(np.stack([np.cos(v), np.sin(v)], axis=1) for v in (train_values, test_values))
        else:
            mean, std = train_values.mean(), max(train_values.std(), 1e-12)
            self.targets = tuple(((v - mean) / std)[:, None] for v in (train_values, test_values))
            self.mean, self.std = mean, std
        edges = _bin_edges(train_values, num_bins)
        self.bins = (np.digitize(train_values, edges), np.digitize(test_values, edges), len(edges) + 1)


def _regression_score(weights, features, targets):
    residual = targets - features @ weights
    total = np.square(targets - targets.mean(axis=0)).sum()
    return max(0.0, 1.0 - float(np.square(residual).sum()) / max(float(total), 1e-300))


def _classification(weights, features, labels, entropy):
    """(explained fraction (H - CE) / H clipped at 0, information H - CE clipped at 0, accuracy)."""
    log_p = _log_softmax(features @ weights)
    cross_entropy = -float(log_p[np.arange(len(labels)), labels].mean())
    information = max(0.0, entropy - cross_entropy)
    explained = information / entropy if entropy > 0 else 0.0
    return explained, information, float(np.mean(np.argmax(log_p, axis=1) == labels))


class _Probe:
    """A fitted probe of one factor on one set of codes, scored by `explained` on any test features."""

    def __init__(self, features_train, target: _FactorTargets, l2_grid, steps):
        self.target = target
        discrete = target.kind == "discrete"
        if discrete:
            labels, test_labels, classes = target.labels
            self.entropy = _entropy(test_labels, classes)
            fit = lambda f, rows, l2, init: _logistic(f, labels[rows], classes, l2, steps, init)  # noqa: E731
        else:
            targets = target.targets[0]
            fit = lambda f, rows, l2, init: _ridge(f, targets[rows], l2)  # noqa: E731
        num = len(features_train)
        cut = int(round(num * (1.0 - VALIDATION_FRACTION)))
        grid = sorted((float(v) for v in l2_grid), reverse=True)  # a path from strong to weak, warm-started
        self.l2, start = grid[0], None
        if len(grid) > 1 and 2 <= cut < num:
            fitted, held = slice(0, cut), slice(cut, num)
            losses, path = [], []
            for l2 in grid:
                weights = fit(features_train[fitted], fitted, l2, path[-1] if path else None)
                path.append(weights)
                outputs = features_train[held] @ weights
                if discrete:
                    losses.append(-_log_softmax(outputs)[np.arange(num - cut), labels[held]].mean())
                else:
                    losses.append(np.square(outputs - targets[held]).mean())
            best = int(np.argmin(losses))
            self.l2, start = grid[best], path[best]
        self.weights = fit(features_train, slice(None), self.l2, start)

    def scores(self, features_test):
        """(explained, sap score, information or None): information for discrete factors only."""
        if self.target.kind == "discrete":
            explained, information, accuracy = _classification(
                self.weights, features_test, self.target.labels[1], self.entropy
            )
            return explained, accuracy, information
        r2 = _regression_score(self.weights, features_test, self.target.targets[1])
        return r2, r2, None


def group_factor_scores(
    codes_train,
    factors_train,
    codes_test,
    factors_test,
    kinds: Sequence[str],
    slices=None,
    *,
    num_bins: int = NUM_BINS,
    num_permutations: int = NUM_PERMUTATIONS,
    seed: int = 0,
    l2_grid: Sequence[float] = L2_GRID,
    logistic_steps: int = LOGISTIC_STEPS,
) -> dict:
    """The T x K matrices of the module docstring from held-out linear probes.

    Args:
      codes_train, codes_test: `[N, T, D_t]`, or `[N, D]` with `slices` (`code_groups`); the same groups.
      factors_train, factors_test: `[N, K]` factor values (`[N_train, K]`, `[N_test, K]`).
      kinds: K of `FACTOR_KINDS`.
      slices: the T `(start, stop)` group slices of flat codes.
      num_bins: equal-frequency bins of a continuous or angle factor for `information` (>= 2).
      num_permutations: shuffles of each group for `importance` (>= 1), from `np.random.default_rng(seed)`.
      l2_grid, logistic_steps: the probes (module docstring).

    Returns:
      dict of float64 `[T, K]` arrays 'explained', 'sap_score', 'information' (nats), 'importance'; `[K]` arrays
      'entropy' (H of the factor or of its bins, nats, test labels), 'informativeness' (the full-code probe's
      score, as 'explained'); 'group_dims' `[T]` (dimensions per group), 'group_ranks' `[T]` (whitened rank).
    """
    train_groups = code_groups(codes_train, slices)
    test_groups = code_groups(codes_test, slices)
    if [g.shape[1] for g in train_groups] != [g.shape[1] for g in test_groups]:
        raise ValueError("codes_train and codes_test have different group sizes.")
    factors_train, kinds = _check_factors(factors_train, kinds, len(train_groups[0]))
    factors_test, _ = _check_factors(factors_test, kinds, len(test_groups[0]))
    if int(num_bins) < 2 or int(num_permutations) < 1:
        raise ValueError(f"num_bins={num_bins} must be >= 2 and num_permutations={num_permutations} >= 1.")
    num_groups, num_factors = len(train_groups), len(kinds)
    l2_grid = tuple(float(v) for v in l2_grid)
    if not l2_grid or min(l2_grid) <= 0:
        raise ValueError(f"l2_grid={l2_grid} must be one or more positive penalties.")
    options = dict(l2_grid=l2_grid, steps=logistic_steps)
    targets = [
        _FactorTargets(factors_train[:, k], factors_test[:, k], kinds[k], int(num_bins)) for k in range(num_factors)
    ]
    shape = (num_groups, num_factors)
    out = {name: np.zeros(shape) for name in ("explained", "sap_score", "information", "importance")}
    out["entropy"] = np.array([_entropy(t.bins[1], t.bins[2]) for t in targets])
    whiteners = [_Whitener(g) for g in train_groups]
    for t, (whiten, train, test) in enumerate(zip(whiteners, train_groups, test_groups)):
        features_train, features_test = whiten(train), whiten(test)
        for k, target in enumerate(targets):
            explained, sap, information = _Probe(features_train, target, **options).scores(features_test)
            if information is None:  # the information of the discretised factor
                binned = _FactorTargets(target.bins[0], target.bins[1], "discrete", int(num_bins))
                information = _Probe(features_train, binned, **options).scores(features_test)[2]
            out["explained"][t, k], out["sap_score"][t, k], out["information"][t, k] = explained, sap, information
    # The probe on all of z, and the drop of its score when one group is shuffled.
    full_train = np.concatenate(train_groups, axis=1)
    full_test = np.concatenate(test_groups, axis=1)
    whiten = _Whitener(full_train)
    features_test = whiten(full_test)
    bounds = np.cumsum([0] + [g.shape[1] for g in test_groups])
    rng = np.random.default_rng(seed)
    # The same shuffles for every group, so reordering the groups reorders the rows and changes nothing else.
    permutations = [rng.permutation(len(full_test)) for _ in range(int(num_permutations))]
    out["informativeness"] = np.zeros(num_factors)
    full_features = whiten(full_train)
    for k, target in enumerate(targets):
        probe = _Probe(full_features, target, **options)
        score = probe.scores(features_test)[0]
        out["informativeness"][k] = score
        for t in range(num_groups):
            drops = []
            for order in permutations:
                shuffled = full_test.copy()
                shuffled[:, bounds[t] : bounds[t + 1]] = full_test[order, bounds[t] : bounds[t + 1]]
                drops.append(score - probe.scores(whiten(shuffled))[0])
            out["importance"][t, k] = max(0.0, float(np.mean(drops)))
    out["group_dims"] = np.array([g.shape[1] for g in train_groups])
    out["group_ranks"] = np.array([w.rank for w in whiteners])
    return out


# --------------------------------------------------------------------------------------------- metrics


def _top_two_gap(matrix):
    """`[K]`: largest minus second-largest entry of each column of a `[T, K]` matrix (T >= 2)."""
    ordered = np.sort(matrix, axis=0)
    return ordered[-1] - ordered[-2]


def _normalised_entropy(p, base):
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / np.log(base)) if base > 1 else 0.0


def mig(information, entropy) -> tuple:
    """Group MIG: (mean over factors, `[K]` per factor) of (I_(1) - I_(2)) / H(v_k), I the `[T, K]` information
    (nats) and H the `[K]` entropies; a factor with H = 0 scores 0."""
    information = np.asarray(information, np.float64)
    entropy = np.asarray(entropy, np.float64)
    _check_groups(information)
    per_factor = np.where(entropy > 0, _top_two_gap(information) / np.where(entropy > 0, entropy, 1.0), 0.0)
    return float(per_factor.mean()), per_factor


def sap(scores) -> tuple:
    """Group SAP: (mean over factors, `[K]` per factor) of the gap between the two largest `[T, K]` probe scores."""
    scores = np.asarray(scores, np.float64)
    _check_groups(scores)
    per_factor = _top_two_gap(scores)
    return float(per_factor.mean()), per_factor


def dci(importance) -> dict:
    """Eastwood & Williams' disentanglement and completeness of a `[T, K]` importance matrix (module docstring).

    Returns:
      dict: 'disentanglement' (D), 'completeness' (C), 'disentanglement_per_group' `[T]`, 'completeness_per_factor'
      `[K]`, 'group_weights' `[T]` (rho_t), 'factor_weights' `[K]`.
    """
    importance = np.asarray(importance, np.float64)
    _check_groups(importance)
    if np.any(importance < 0):
        raise ValueError("importance must be non-negative.")
    num_groups, num_factors = importance.shape
    total = importance.sum()
    row_sums, column_sums = importance.sum(axis=1), importance.sum(axis=0)
    per_group = np.array(
        [1.0 - _normalised_entropy(row / s, num_factors) if s > 0 else 0.0 for row, s in zip(importance, row_sums)]
    )
    per_factor = np.array(
        [1.0 - _normalised_entropy(col / s, num_groups) if s > 0 else 0.0 for col, s in zip(importance.T, column_sums)]
    )
    group_weights = row_sums / total if total > 0 else np.zeros(num_groups)
    factor_weights = column_sums / total if total > 0 else np.zeros(num_factors)
    return {
        "disentanglement": float((group_weights * per_group).sum()),
        "completeness": float((factor_weights * per_factor).sum()),
        "disentanglement_per_group": per_group,
        "completeness_per_factor": per_factor,
        "group_weights": group_weights,
        "factor_weights": factor_weights,
    }


def _check_groups(matrix):
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"a [T, K] matrix with T >= 2 groups is needed (a gap needs two), got {list(matrix.shape)}.")


def disentanglement_metrics(scores: dict) -> dict:
    """MIG, SAP and DCI (module docstring) from `group_factor_scores`' matrices; per-factor values included.

    Returns:
      JSON-able dict: 'mig', 'sap', 'dci_disentanglement', 'dci_completeness', 'dci_informativeness' (floats) and
      'per_factor' {'mig', 'sap', 'completeness', 'informativeness'} and 'per_group' {'disentanglement',
      'weight'} lists.
    """
    mig_value, mig_per_factor = mig(scores["information"], scores["entropy"])
    sap_value, sap_per_factor = sap(scores["sap_score"])
    dci_values = dci(scores["importance"])
    return {
        "mig": mig_value,
        "sap": sap_value,
        "dci_disentanglement": dci_values["disentanglement"],
        "dci_completeness": dci_values["completeness"],
        "dci_informativeness": float(np.mean(scores["informativeness"])),
        "per_factor": {
            "mig": mig_per_factor.tolist(),
            "sap": sap_per_factor.tolist(),
            "completeness": dci_values["completeness_per_factor"].tolist(),
            "informativeness": np.asarray(scores["informativeness"]).tolist(),
        },
        "per_group": {
            "disentanglement": dci_values["disentanglement_per_group"].tolist(),
            "weight": dci_values["group_weights"].tolist(),
        },
    }


def dominant_groups(matrix) -> list:
    """The 1-based time step with the largest entry of each factor's column of a `[T, K]` matrix."""
    return [int(t) + 1 for t in np.argmax(np.asarray(matrix), axis=0)]


def evaluate_groups(
    codes_train,
    factors_train,
    codes_test,
    factors_test,
    kinds: Sequence[str],
    slices=None,
    factor_names: Optional[Sequence[str]] = None,
    **options,
) -> dict:
    """`group_factor_scores` + `disentanglement_metrics` as one JSON-able dict: the metrics, the `[T][K]` matrices as
    lists, the factor names and kinds, and each factor's dominant time step (by `explained` and by `importance`).
    `options`: `group_factor_scores`' keyword arguments."""
    scores = group_factor_scores(codes_train, factors_train, codes_test, factors_test, kinds, slices, **options)
    num_factors = len(kinds)
    names = list(factor_names) if factor_names is not None else [f"factor_{k}" for k in range(num_factors)]
    if len(names) != num_factors:
        raise ValueError(f"factor_names has {len(names)} names for {num_factors} factors.")
    return {
        "factor_names": names,
        "factor_kinds": list(kinds),
        "num_time_steps": int(scores["explained"].shape[0]),
        "num_train": int(np.shape(factors_train)[0]),
        "num_test": int(np.shape(factors_test)[0]),
        "metrics": disentanglement_metrics(scores),
        "matrices": {
            key: np.asarray(scores[key]).tolist() for key in ("explained", "sap_score", "information", "importance")
        },
        "entropy": scores["entropy"].tolist(),
        "group_dims": scores["group_dims"].tolist(),
        "group_ranks": scores["group_ranks"].tolist(),
        "dominant_time_step": {
            "explained": dict(zip(names, dominant_groups(scores["explained"]))),
            "importance": dict(zip(names, dominant_groups(scores["importance"]))),
        },
    }


def markdown_table(result: dict, matrix: str = "explained", digits: int = 2) -> str:
    """A Markdown table of one `[T][K]` matrix of `evaluate_groups`' result: rows the time steps 1..T, columns the
    factors, each column's largest entry in bold."""
    values = np.asarray(result["matrices"][matrix])
    names = result["factor_names"]
    best = np.argmax(values, axis=0)
    lines = ["| time step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for t, row in enumerate(values):
        cells = [(f"**{v:.{digits}f}**" if best[k] == t else f"{v:.{digits}f}") for k, v in enumerate(row)]
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- interventions


class FactorProbes:
    """The probes of every factor on all of z (as `importance` uses them), fitted once, to predict factors of new
    codes: `outputs(codes)` (per factor: a discrete factor's class probabilities `[N, C]`, a continuous factor's value
    `[N]`, an angle `[N]` in (-pi, pi]) and `predict(codes) -> [N, K]` (the most probable class value in place of the
    probabilities)."""

    def __init__(
        self,
        codes_train,
        factors_train,
        kinds: Sequence[str],
        slices=None,
        *,
        l2_grid: Sequence[float] = L2_GRID,
        logistic_steps: int = LOGISTIC_STEPS,
    ):
        self.slices = slices
        codes = np.concatenate(code_groups(codes_train, slices), axis=1)
        factors, self.kinds = _check_factors(factors_train, kinds, len(codes))
        self.whiten = _Whitener(codes)
        features = self.whiten(codes)
        self.probes = []
        for k, kind in enumerate(self.kinds):
            target = _FactorTargets(factors[:, k], factors[:, k], kind, NUM_BINS)
            self.probes.append(_Probe(features, target, tuple(l2_grid), logistic_steps))

    def outputs(self, codes) -> list:
        features = self.whiten(np.concatenate(code_groups(codes, self.slices), axis=1))
        out = []
        for probe in self.probes:
            raw = features @ probe.weights
            target = probe.target
            if target.kind == "discrete":
                out.append(np.exp(_log_softmax(raw)))
            elif target.kind == "angle":
                out.append(np.arctan2(raw[:, 1], raw[:, 0]))
            else:
                out.append(raw[:, 0] * target.std + target.mean)
        return out

    def predict(self, codes) -> np.ndarray:
        columns = []
        for probe, output in zip(self.probes, self.outputs(codes)):
            if probe.target.kind == "discrete":
                output = probe.target.classes[np.argmax(output, axis=1)].astype(np.float64)
            columns.append(output)
        return np.stack(columns, axis=1)


def intervention_effects(before, after, kinds: Sequence[str], scales) -> np.ndarray:
    """How far the probes' outputs moved, `[K]`: a discrete factor, the mean total-variation distance between the
    predicted class distributions, (1/2) sum_c |p_c - p'_c| in [0, 1] (it sees a shift of belief even where the most
    probable class stays, as for a rare attribute); a continuous one, the mean |change| in units of `scales[k]` (e.g.
    the factor's standard deviation); an angle, the mean |wrapped change| / pi (in [0, 1]).

    Args:
      before, after: `FactorProbes.outputs` of the same images before and after an intervention (K arrays each).
      scales: `[K]` positive scales of the continuous factors (ignored for the others).
    """
    effects = []
    for k, kind in enumerate(kinds):
        old, new = np.asarray(before[k], np.float64), np.asarray(after[k], np.float64)
        if kind == "discrete":
            effects.append(float(0.5 * np.abs(new - old).sum(axis=1).mean()))
        elif kind == "angle":
            effects.append(float(np.mean(np.abs(np.angle(np.exp(1j * (new - old)))))) / np.pi)
        else:
            effects.append(float(np.mean(np.abs(new - old)) / float(scales[k])))
    return np.array(effects)
