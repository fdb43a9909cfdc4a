"""Gradient-boosted trees (LightGBM) trained on the bundle's inputs and turned into a torch program.

The bundle contract is one torch.export program: `numeric` float32 [N, n_numeric] raw values (NaN = missing) and
`codes` int64 [N, n_categorical] (0 = unseen or missing, 1..K = the signature's vocabulary order) in, the
probability of the positive class, float32 [N], out. A LightGBM booster is not that, so `to_program` rewrites
`booster.dump_model()` as node arrays held in buffers (exported with the program, loaded weights-only) and a
forward that routes rows exactly as LightGBM's C++ predictor does (tree.h NumericalDecision/CategoricalDecision
and the dense-row reader of c_api.cpp):

- numerical split `x <= threshold`: the threshold is a float64; for a float32 x, `x <= t` holds exactly when
  `x <= the largest float32 not above t`, so thresholds are rounded DOWN to float32 (round-to-nearest is wrong
  for every x between the two);
- the predictor drops |x| <= kZeroThreshold (1e-35f) from a dense row, i.e. reads it as 0, and a split whose
  missing_type is not NaN reads NaN as 0 too;
- missing_type Zero sends NaN and (near-)zeros, missing_type NaN sends NaN, to the default_left side;
- categorical split: the code goes left when it is in the split's category set; negative codes and codes past
  the set (beyond the vocabulary) go right.

This module trains the booster and reads its dump into a Forest; components/training/tree_programs.py holds the
two strategies (TreeGemmProgram, TreeTraverseProgram), the program that holds both (TreeDispatchProgram) and
to_program with the measurements behind the choice; components/training/tree_parity.py the edge rows and the check.

Nothing of hummingbird is used: it has no torch.export backend and gets missing values and categorical splits
wrong (shared/FACTS.md). `tree_parity.parity_check` proves the conversion on ordinary rows AND on rows built from the model's
own thresholds, where the traps above show; ordinary rows pass even when they are wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# LightGBM's kZeroThreshold is the float 1e-35f; as a Python float it is that float32 value exactly, so comparing
# float32 tensors against it matches the C++ comparison (a double against the promoted float).
KZERO = float(np.float32(1e-35))
PARITY_TOLERANCE = 1e-5


class TreeConversionError(ValueError):
    """The booster cannot be expressed by the program (an unsupported objective or feature layout)."""


class ParityError(AssertionError):
    """The torch program does not reproduce booster.predict."""


# ----------------------------------------------------------------------------------------------- training


@dataclass
class TreeTrainResult:
    booster: Any  # lightgbm.Booster, cut to the best iteration
    best_iteration: int
    best_score: dict[str, float]
    params: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)


def lightgbm_matrix(numeric: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The float64 matrix LightGBM sees: numeric columns first, then the category codes.

    The float32 values are widened exactly, so LightGBM trains and predicts on the very values the program gets.
    """
    numeric = np.asarray(numeric, dtype=np.float32)
    codes = np.asarray(codes)
    if numeric.ndim != 2 or codes.ndim != 2 or numeric.shape[0] != codes.shape[0]:
        raise ValueError(f"numeric {numeric.shape} and codes {codes.shape} must be 2-D with the same number of rows")
    return np.hstack([numeric.astype(np.float64), codes.astype(np.float64)])


def train_lightgbm(
    train_numeric: np.ndarray,
    train_codes: np.ndarray,
    train_labels: np.ndarray,
    valid_numeric: np.ndarray,
    valid_codes: np.ndarray,
    valid_labels: np.ndarray,
    *,
    num_threads: int,
    seed: int = 0,
    num_boost_round: int = 500,
    early_stopping_rounds: int = 30,
    params: dict[str, Any] | None = None,
) -> TreeTrainResult:
    """Train a binary LightGBM classifier with early stopping on the validation set; deterministic.

    Category codes are LightGBM categorical features (code 0, unseen/missing, is a category of its own: rows whose
    value was missing in training teach the model where such rows go). No class weighting: it would skew the
    probabilities, and the decision threshold is chosen on calibrated scores anyway.
    """
    import lightgbm as lgb

    n_numeric, n_categorical = np.shape(train_numeric)[1], np.shape(train_codes)[1]
    if n_numeric + n_categorical == 0:
        raise ValueError("no features to train on")
    for name, labels in (("train", train_labels), ("validation", valid_labels)):
        values = set(np.unique(np.asarray(labels)).tolist())
        if not values <= {0, 1}:
            raise ValueError(f"{name} labels must be 0/1, got {sorted(values)[:5]}")
        if len(values) < 2:
            raise ValueError(f"{name} labels have a single class {values}: nothing to learn or stop on")
    merged = {
        "objective": "binary",
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_data_in_leaf": 20,
        "verbosity": -1,
        # Determinism: same seed, data and thread count -> the same trees. LightGBM asks for a forced
        # histogram layout with deterministic=True (the automatic choice is timed, hence not reproducible).
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": max(1, int(num_threads)),
    }
    merged.update(params or {})
    categorical = list(range(n_numeric, n_numeric + n_categorical))
    train_set = lgb.Dataset(
        lightgbm_matrix(train_numeric, train_codes),
        label=np.asarray(train_labels, dtype=np.float64),
        categorical_feature=categorical,
        free_raw_data=True,
    )
    valid_set = lgb.Dataset(
        lightgbm_matrix(valid_numeric, valid_codes),
        label=np.asarray(valid_labels, dtype=np.float64),
        categorical_feature=categorical,
        reference=train_set,
    )
    history: dict[str, Any] = {}
    booster = lgb.train(
        merged,
        train_set,
        num_boost_round=num_boost_round,
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False), lgb.record_evaluation(history)],
    )
    best = booster.best_iteration or booster.current_iteration()
    # Cut to the best iteration: every later predict/dump then means the same model, with no num_iteration to pass.
    cut = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    best_score = {k: float(v) for k, v in booster.best_score.get("valid", {}).items()}
    return TreeTrainResult(cut, best, best_score, merged, {k: list(v) for k, v in history.get("valid", {}).items()})


# ----------------------------------------------------------------------------------------------- conversion


def round_down_f32(values: np.ndarray) -> np.ndarray:
    """The largest float32 <= each float64 value (so that `float32 x <= result` iff `x <= value`)."""
    values = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        out = values.astype(np.float32)
    above = out.astype(np.float64) > values
    out[above] = np.nextafter(out[above], np.float32(-np.inf))
    return out


@dataclass
class Forest:
    """Every tree of a dump as flat arrays. Internal nodes are numbered numeric splits first, then categorical
    splits (the order of the decision columns); leaves are numbered after all internal nodes."""

    n_numeric: int
    n_categorical: int
    sigmoid: float
    n_trees: int
    # internal nodes (length I = n_num_nodes + n_cat_nodes)
    n_num_nodes: int
    num_feature: np.ndarray  # int64 [n_num_nodes] column of `numeric`
    num_threshold: np.ndarray  # float64 [n_num_nodes] as the model holds them (dump's +-1e300 back to +-inf)
    miss_zero: np.ndarray  # bool
    miss_nan: np.ndarray  # bool
    num_default_left: np.ndarray  # bool
    cat_feature: np.ndarray  # int64 [n_cat_nodes] column of `codes`
    cat_sets: list[list[int]]  # categories that go left, per categorical node
    left: np.ndarray  # int64 [I] child node id (internal id, or I + leaf id)
    right: np.ndarray
    node_tree: np.ndarray  # int64 [I]
    # leaves (length L)
    leaf_value: np.ndarray  # float64
    leaf_tree: np.ndarray  # int64
    leaf_depth: np.ndarray  # int64
    roots: np.ndarray  # int64 [T] node id of each root (a leaf id for single-leaf trees)
    max_depth: int

    @property
    def n_internal(self) -> int:
        return int(self.left.shape[0])


def parse_dump(dump: dict[str, Any], n_numeric: int, n_categorical: int) -> Forest:
    """Read `booster.dump_model()` into flat arrays; raises TreeConversionError for what the program cannot express."""
    objective = str(dump.get("objective", ""))
    parts = objective.split()
    if not parts or parts[0] != "binary":
        raise TreeConversionError(f"only binary objectives convert, the booster has {objective!r}")
    sigmoid = 1.0
    for part in parts[1:]:
        if part.startswith("sigmoid:"):
            sigmoid = float(part.split(":", 1)[1])
    if dump.get("num_class", 1) != 1 or dump.get("num_tree_per_iteration", 1) != 1:
        raise TreeConversionError("multi-class boosters do not convert")
    if dump.get("average_output"):
        raise TreeConversionError("random-forest mode (average_output) is not supported")
    n_features = int(dump.get("max_feature_idx", -1)) + 1
    if n_features != n_numeric + n_categorical:
        raise TreeConversionError(f"the booster has {n_features} features, the program {n_numeric} numeric + {n_categorical} categorical")

    num_nodes: list[tuple[int, dict]] = []  # (tree, node)
    cat_nodes: list[tuple[int, dict]] = []
    leaves: list[tuple[int, dict, int]] = []  # (tree, leaf, depth)

    def visit(tree: int, node: dict, depth: int) -> None:
        if "leaf_value" in node:
            leaves.append((tree, node, depth))
            return
        feature = int(node["split_feature"])
        if node["decision_type"] == "<=":
            if feature >= n_numeric:
                raise TreeConversionError(f"tree {tree}: numerical split on feature {feature}, a categorical column")
            num_nodes.append((tree, node))
        elif node["decision_type"] == "==":
            if feature < n_numeric:
                raise TreeConversionError(f"tree {tree}: categorical split on feature {feature}, a numeric column")
            cat_nodes.append((tree, node))
        else:
            raise TreeConversionError(f"tree {tree}: unknown decision_type {node['decision_type']!r}")
        visit(tree, node["left_child"], depth + 1)
        visit(tree, node["right_child"], depth + 1)

    trees = dump.get("tree_info", [])
    if not trees:
        raise TreeConversionError("the booster has no trees")
    for info in trees:
        visit(int(info["tree_index"]), info["tree_structure"], 0)

    ids: dict[int, int] = {}
    for i, (_, node) in enumerate(num_nodes + cat_nodes):
        ids[id(node)] = i
    n_internal = len(ids)
    for j, (_, leaf, _) in enumerate(leaves):
        ids[id(leaf)] = n_internal + j
    internal = num_nodes + cat_nodes

    def child(node: dict, side: str) -> int:
        return ids[id(node[side])]

    missing = [str(node.get("missing_type", "None")) for _, node in num_nodes]
    unknown = sorted(set(missing) - {"None", "Zero", "NaN"})
    if unknown:
        raise TreeConversionError(f"unknown missing_type {unknown}")
    cat_sets = []
    for tree, node in cat_nodes:
        cats = [int(c) for c in str(node["threshold"]).split("||") if c != ""]
        if any(c < 0 for c in cats):
            raise TreeConversionError(f"tree {tree}: negative category in a categorical split {cats}")
        cat_sets.append(sorted(set(cats)))
    leaf_depth = np.array([d for _, _, d in leaves], dtype=np.int64)
    return Forest(
        n_numeric=n_numeric,
        n_categorical=n_categorical,
        sigmoid=sigmoid,
        n_trees=len(trees),
        n_num_nodes=len(num_nodes),
        num_feature=np.array([int(n["split_feature"]) for _, n in num_nodes], dtype=np.int64),
        num_threshold=_undo_avoid_inf(np.array([float(n["threshold"]) for _, n in num_nodes], dtype=np.float64)),
        miss_zero=np.array([m == "Zero" for m in missing], dtype=bool),
        miss_nan=np.array([m == "NaN" for m in missing], dtype=bool),
        num_default_left=np.array([bool(n.get("default_left", False)) for _, n in num_nodes], dtype=bool),
        cat_feature=np.array([int(n["split_feature"]) - n_numeric for _, n in cat_nodes], dtype=np.int64),
        cat_sets=cat_sets,
        left=np.array([child(n, "left_child") for _, n in internal], dtype=np.int64),
        right=np.array([child(n, "right_child") for _, n in internal], dtype=np.int64),
        node_tree=np.array([t for t, _ in internal], dtype=np.int64),
        leaf_value=np.array([float(leaf["leaf_value"]) for _, leaf, _ in leaves], dtype=np.float64),
        leaf_tree=np.array([t for t, _, _ in leaves], dtype=np.int64),
        leaf_depth=leaf_depth,
        roots=np.array([ids[id(info["tree_structure"])] for info in trees], dtype=np.int64),
        max_depth=int(leaf_depth.max()) if leaf_depth.size else 0,
    )


def _undo_avoid_inf(thresholds: np.ndarray) -> np.ndarray:
    """dump_model writes an infinite threshold as +-1e300 (Common::AvoidInf); the model holds inf, and `inf <= inf`
    sends x = inf left where `inf <= 1e300` would not. Float32 data never puts a real threshold that far out."""
    out = thresholds.copy()
    out[out >= 1e300] = np.inf
    out[out <= -1e300] = -np.inf
    return out
