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

Two strategies (TreeGemmProgram, TreeTraverseProgram) and a program that holds both (TreeDispatchProgram); see
to_program for the measurements behind the choice.

Nothing of hummingbird is used: it has no torch.export backend and gets missing values and categorical splits
wrong (shared/FACTS.md). `parity_check` proves the conversion on ordinary rows AND on rows built from the model's
own thresholds, where the traps above show; ordinary rows pass even when they are wrong.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

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
        raise TreeConversionError(
            f"the booster has {n_features} features, the program {n_numeric} numeric + {n_categorical} categorical"
        )

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


# How a numerical split reads NaN and (near-)zero values, as one column variant each: the variant substitutes the
# value that routes such rows the right way for EVERY threshold, so the split itself is one `x <= t`.
#   -inf goes left at any threshold; NaN goes right at any threshold (`NaN <= t` is False, even for t = inf).
_VARIANTS = (
    ("None", None),  # NaN and |x| <= kZero read as 0 (the default side is never used)
    ("NaN", True),  # NaN -> -inf (left); |x| <= kZero -> 0
    ("NaN", False),  # NaN stays NaN (right); |x| <= kZero -> 0
    ("Zero", True),  # NaN and |x| <= kZero -> -inf (left)
    ("Zero", False),  # NaN and |x| <= kZero -> NaN (right)
)


def _variant(missing_zero: bool, missing_nan: bool, default_left: bool) -> int:
    kind = "Zero" if missing_zero else "NaN" if missing_nan else "None"
    if kind == "None":
        return 0  # default_left is irrelevant: one variant serves both
    return _VARIANTS.index((kind, bool(default_left)))


def _t(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _children(forest: Forest) -> np.ndarray:
    """child[2*node + 1] = left, child[2*node] = right (a True "goes left" adds 1); a leaf is its own child on both
    sides, so rows that reached a leaf stay there while deeper trees keep walking."""
    n_internal, n_leaves = forest.n_internal, forest.leaf_value.shape[0]
    children = np.empty(2 * (n_internal + n_leaves), dtype=np.int64)
    children[0 : 2 * n_internal : 2] = forest.right
    children[1 : 2 * n_internal : 2] = forest.left
    leaf_ids = np.arange(n_internal, n_internal + n_leaves, dtype=np.int64)
    children[2 * n_internal :: 2] = leaf_ids
    children[2 * n_internal + 1 :: 2] = leaf_ids
    return children


class _TreeProgramBase(nn.Module):
    """What both strategies share: the per-column handling of missing values and category codes, and the link."""

    strategy = "base"

    def __init__(self, forest: Forest) -> None:
        super().__init__()
        self.n_numeric = forest.n_numeric
        self.n_categorical = forest.n_categorical
        self.n_num_nodes = forest.n_num_nodes
        self.n_cat_nodes = len(forest.cat_sets)
        self.n_internal = forest.n_internal
        self.n_trees = forest.n_trees
        self.sigmoid = float(forest.sigmoid)
        variant = np.array(
            [_variant(z, n, d) for z, n, d in zip(forest.miss_zero, forest.miss_nan, forest.num_default_left)],
            dtype=np.int64,
        )
        # Only the variants some split uses are built at run time (fewer operations for one row).
        self.variants = sorted(set(variant.tolist()))
        position = {v: i for i, v in enumerate(self.variants)}
        column = np.array([position[v] for v in variant], dtype=np.int64) * forest.n_numeric + forest.num_feature
        self.register_buffer("num_column", _t(column, torch.int64))  # column of the variant matrix
        self.register_buffer("num_threshold", _t(round_down_f32(forest.num_threshold), torch.float32))
        # Categorical: codes < 0 or past the largest code any split on that feature sends left are moved to one
        # slot past it (top + 1), which no split sends left.
        top = np.zeros(max(forest.n_categorical, 1), dtype=np.int64)
        for cats, f in zip(forest.cat_sets, forest.cat_feature):
            if cats:
                top[f] = max(top[f], max(cats))
        self.register_buffer("cat_feature", _t(forest.cat_feature, torch.int64))
        self.register_buffer("cat_off_table", _t(top + 1, torch.int64))

    def _numeric_variants(self, numeric: torch.Tensor) -> torch.Tensor:
        isnan = torch.isnan(numeric)
        # The C++ predictor reads |x| <= kZeroThreshold as 0 (it makes dense rows sparse); False for NaN.
        missing = isnan | (numeric.abs() <= KZERO)
        columns = []
        for v in self.variants:
            kind, left = _VARIANTS[v]
            if kind == "None":  # NaN is read as 0 when the split has no NaN branch
                columns.append(torch.where(missing, 0.0, numeric))
            elif kind == "NaN":
                zeroed = torch.where(missing & ~isnan, 0.0, numeric)
                columns.append(torch.where(isnan, float("-inf"), zeroed) if left else zeroed)
            else:
                columns.append(torch.where(missing, float("-inf") if left else float("nan"), numeric))
        return columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)

    def _safe_codes(self, codes: torch.Tensor) -> torch.Tensor:
        off = self.cat_off_table
        return torch.where((codes < 0) | (codes > off), off, codes)

    def raw_score(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        raw = self.raw_score(numeric, codes)  # float64: 300 leaf values add up without float32 rounding
        return torch.sigmoid(raw * self.sigmoid).to(torch.float32)


class TreeGemmProgram(_TreeProgramBase):
    """Decide every split for every row, then find each tree's leaf with one batched matrix product: a leaf is
    reached when every split on its path agrees (the +-1 decisions times the +-1 path matrix equal its depth).

    A fixed, small number of operations whatever the depth: the fastest for a few rows. The work is
    N x (all nodes) for the decisions plus N x trees x nodes x leaves for the product: slow for many rows.
    """

    strategy = "gemm"

    def __init__(self, forest: Forest) -> None:
        super().__init__(forest)
        base, table = [], []
        top = self.cat_off_table.numpy()
        offset = 0
        for cats, f in zip(forest.cat_sets, forest.cat_feature):
            row = np.zeros(int(top[f]) + 2, dtype=bool)  # codes 0..top+1 after _safe_codes; top+1 is never left
            row[list(cats)] = True
            base.append(offset)
            table.append(row)
            offset += len(row)
        self.register_buffer("cat_base", _t(np.array(base, dtype=np.int64), torch.int64))
        self.register_buffer("cat_table", _t(np.concatenate(table) if table else np.zeros(1, bool), torch.bool))

        n_internal, n_trees = forest.n_internal, forest.n_trees
        per_tree_nodes = np.bincount(forest.node_tree, minlength=n_trees) if n_internal else np.zeros(n_trees, int)
        per_tree_leaves = np.bincount(forest.leaf_tree, minlength=n_trees)
        max_nodes = max(int(per_tree_nodes.max()), 1)
        max_leaves = int(per_tree_leaves.max())
        # Column of the decision matrix for each (tree, slot); padding slots read column 0 with a zero path weight.
        node_index = np.zeros((n_trees, max_nodes), dtype=np.int64)
        slot_of_node = np.zeros(max(n_internal, 1), dtype=np.int64)
        fill = np.zeros(n_trees, dtype=np.int64)
        for node, tree in enumerate(forest.node_tree):
            node_index[tree, fill[tree]] = node
            slot_of_node[node] = fill[tree]
            fill[tree] += 1
        leaf_slot = np.zeros(forest.leaf_value.shape[0], dtype=np.int64)
        fill[:] = 0
        for leaf, tree in enumerate(forest.leaf_tree):
            leaf_slot[leaf] = fill[tree]
            fill[tree] += 1
        path = np.zeros((n_trees, max_nodes, max_leaves), dtype=np.float32)
        depth = np.full((n_trees, max_leaves), -1.0, dtype=np.float32)  # padding leaves are never reached
        values = np.zeros((n_trees, max_leaves), dtype=np.float64)
        for leaf, tree in enumerate(forest.leaf_tree):
            depth[tree, leaf_slot[leaf]] = forest.leaf_depth[leaf]
            values[tree, leaf_slot[leaf]] = forest.leaf_value[leaf]
        # Walk each tree from its root, marking for every leaf the side (+1 left, -1 right) taken at each ancestor.
        for tree in range(n_trees):
            stack = [(int(forest.roots[tree]), [])]
            while stack:
                node, ancestors = stack.pop()
                if node >= n_internal:
                    for anc, sign in ancestors:
                        path[tree, slot_of_node[anc], leaf_slot[node - n_internal]] = sign
                    continue
                stack.append((int(forest.left[node]), ancestors + [(node, 1.0)]))
                stack.append((int(forest.right[node]), ancestors + [(node, -1.0)]))
        self.max_nodes = max_nodes
        self.register_buffer("node_index", _t(node_index.reshape(-1), torch.int64))
        self.register_buffer("path", _t(path, torch.float32))
        self.register_buffer("leaf_depth", _t(depth, torch.float32))
        self.register_buffer("leaf_values", _t(values.reshape(-1), torch.float64))
        self.register_buffer("tree_offset", _t(np.arange(n_trees, dtype=np.int64) * max_leaves, torch.int64))

    def decisions(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """bool [N, I]: does each row go left at each internal node (numeric splits first, then categorical)."""
        parts = []
        if self.n_num_nodes:
            parts.append(self._numeric_variants(numeric).index_select(1, self.num_column) <= self.num_threshold)
        if self.n_cat_nodes:
            parts.append(self.cat_table[self._safe_codes(codes).index_select(1, self.cat_feature) + self.cat_base])
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def raw_score(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        n = numeric.shape[0]
        if self.n_internal:
            signs = self.decisions(numeric, codes).index_select(1, self.node_index).to(torch.float32) * 2.0 - 1.0
            signs = signs.reshape(n, self.n_trees, self.max_nodes).transpose(0, 1)  # [T, N, nodes]
            agree = torch.bmm(signs, self.path)  # [T, N, leaves]; small integers, exact in float32
        else:
            agree = torch.zeros(self.n_trees, n, self.leaf_depth.shape[1], dtype=torch.float32)
        reached = (agree == self.leaf_depth.unsqueeze(1)).to(torch.int8)  # exactly one leaf per tree and row
        leaf = reached.argmax(dim=2).transpose(0, 1) + self.tree_offset  # [N, T]
        return self.leaf_values[leaf].sum(dim=1)


class TreeTraverseProgram(_TreeProgramBase):
    """Walk all trees one level per step, deciding only the nodes the rows are at (no [N, all nodes] matrix).

    Each numeric input column is first turned into a bin: how many of the column's distinct float32 thresholds lie
    below the value (`x <= t_k` iff bin <= k); category codes are bins already. Every split is then one lookup in
    a boolean table (split, bin) -> goes left, numeric and categorical alike. Seven small-table lookups per level
    and row: the fastest for many rows, but one step per level of the deepest tree (operation overhead for one row).
    """

    strategy = "traverse"

    def __init__(self, forest: Forest) -> None:
        super().__init__(forest)
        n_internal, n_leaves = forest.n_internal, forest.leaf_value.shape[0]
        self.depth = forest.max_depth
        thresholds = self.num_threshold.numpy()
        columns = self.num_column.numpy()
        used = sorted(set(columns.tolist()))
        per_column = [np.unique(thresholds[columns == c]) for c in used]
        width = max((len(u) for u in per_column), default=1)
        bounds = np.full((max(len(used), 1), width), np.inf, dtype=np.float32)  # padding past every bin's top
        for i, u in enumerate(per_column):
            bounds[i, : len(u)] = u
        self.n_bin_columns = len(used)
        self.register_buffer("bin_source", _t(np.array(used or [0], dtype=np.int64), torch.int64))
        self.register_buffer("bounds", _t(bounds, torch.float32))
        self.register_buffer("bin_top", _t(np.array([len(u) for u in per_column] or [0], dtype=np.int64), torch.int64))
        zcol = np.zeros(n_internal + n_leaves, dtype=np.int64)
        base = np.zeros(n_internal + n_leaves, dtype=np.int64)
        blocks: list[np.ndarray] = []
        offset = 0
        position = {c: i for i, c in enumerate(used)}
        for node in range(forest.n_num_nodes):
            i = position[int(columns[node])]
            k = int(np.searchsorted(per_column[i], thresholds[node]))
            blocks.append(np.arange(len(per_column[i]) + 1) <= k)  # bins 0..len: bin <= k goes left
            zcol[node], base[node] = i, offset
            offset += len(blocks[-1])
        top = self.cat_off_table.numpy()
        for j, (cats, f) in enumerate(zip(forest.cat_sets, forest.cat_feature)):
            block = np.zeros(int(top[f]) + 2, dtype=bool)  # codes 0..top+1 after _safe_codes
            block[list(cats)] = True
            zcol[forest.n_num_nodes + j], base[forest.n_num_nodes + j] = self.n_bin_columns + int(f), offset
            blocks.append(block)
            offset += len(block)
        # Leaves read column 0 at base 0 and go nowhere (both children are the leaf): the table only has to be long
        # enough for any bin or code of any column.
        longest = max(width + 1, int(top.max()) + 2)
        self.register_buffer("zcol", _t(zcol, torch.int64))
        self.register_buffer("base", _t(base, torch.int64))
        self.register_buffer("table", _t(np.concatenate(blocks + [np.zeros(longest, dtype=bool)]), torch.bool))
        self.register_buffer("child", _t(_children(forest), torch.int64))
        self.register_buffer("roots", _t(forest.roots, torch.int64))
        self.register_buffer("leaf_value", _t(forest.leaf_value, torch.float64))

    def bins(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.n_bin_columns:
            x = self._numeric_variants(numeric).index_select(1, self.bin_source).t().contiguous()
            b = torch.searchsorted(self.bounds, x, side="left")  # NaN counts past every bound
            parts.append(torch.minimum(b, self.bin_top.unsqueeze(1)).t())
        if self.n_cat_nodes:
            parts.append(self._safe_codes(codes))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def raw_score(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        node = self.roots.unsqueeze(0).expand(numeric.shape[0], self.n_trees)
        if self.n_internal:
            z = self.bins(numeric, codes)
            for _ in range(self.depth):
                left = self.table[self.base[node] + z.gather(1, self.zcol[node])]
                node = self.child[torch.add(left, node, alpha=2)]
        return self.leaf_value[node - self.n_internal].sum(dim=1)


class TreeDispatchProgram(nn.Module):
    """Both strategies in one program: GEMM up to `cutoff` rows per call, traversal above (torch.cond on the batch
    size, so one exported program with a dynamic batch keeps both branches)."""

    strategy = "dispatch"

    def __init__(self, gemm: TreeGemmProgram, traverse: TreeTraverseProgram, cutoff: int) -> None:
        super().__init__()
        self.gemm = gemm
        self.traverse = traverse
        self.cutoff = int(cutoff)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return torch.cond(numeric.shape[0] <= self.cutoff, self.gemm, self.traverse, (numeric, codes))


STRATEGIES = ("auto", "gemm", "traverse", "dispatch")
TIMING_BATCHES = (1, 4, 16, 64, 256, 1000)
GEMM_MARGIN = 0.8


def choose_cutoff(
    gemm: nn.Module, traverse: nn.Module, n_numeric: int, n_categorical: int, batches: Sequence[int] = TIMING_BATCHES
) -> tuple[int, dict[int, dict[str, float]]]:
    """The largest batch size up to which GEMM is faster, timed on this model (0: traversal always faster).

    Both strategies' cost is data-independent (fixed depth loop, all splits decided), so random rows time them."""
    rng = np.random.default_rng(0)
    timings: dict[int, dict[str, float]] = {}
    cutoff = 0
    for n in batches:
        numeric = torch.from_numpy(rng.normal(size=(n, max(n_numeric, 1))).astype(np.float32))
        codes = torch.from_numpy(rng.integers(0, 4, size=(n, max(n_categorical, 1))))
        best = {"gemm": math.inf, "traverse": math.inf}
        repeats = 20 if n <= 16 else 2
        with torch.no_grad():
            for _ in range(3):  # interleaved rounds, best of each: other load on the machine hits both alike
                for name, module in (("gemm", gemm), ("traverse", traverse)):
                    module(numeric, codes)
                    start = time.perf_counter()
                    for _ in range(repeats):
                        module(numeric, codes)
                    best[name] = min(best[name], (time.perf_counter() - start) / repeats * 1000.0)
        timings[n] = best
        # GEMM has to win clearly: the dispatching program pays ~0.1 ms per call for torch.cond (measured on the
        # exported program), which eager timings do not show.
        if best["gemm"] <= GEMM_MARGIN * best["traverse"] and cutoff == max([0, *[b for b in batches if b < n]]):
            cutoff = n
    return cutoff, timings


def to_program(
    booster: Any, n_numeric: int, n_categorical: int, strategy: str = "auto", cutoff: int | None = None
) -> nn.Module:
    """The booster as a torch module (numeric float32, codes int64 -> probability float32 [N]).

    Why two strategies. Measured (benchmarks/bench_trees.py; 300 trees, 31 leaves, depth 14, NaNs and
    categorical splits; exported programs, p50 ms, 2 threads, a shared 2-core machine):
                   batch 1   batch 16   batch 64   batch 1000   (native booster.predict: 0.02 / - / - / 9.5)
        gemm        0.30      1.10       3.9        109
        traverse    0.52      1.04       2.4         28
        dispatch    0.41      1.30       2.5         25         (gemm up to 16 rows, traverse above)
    GEMM wins for one row (a fixed ~15 operations; the traversal pays ~7 per level of the deepest tree), the
    traversal wins from ~16 rows on and by 4x at 1,000 (GEMM decides every node for every row and multiplies by
    all leaves). Neither dominates, and the crossover depends on the model (depth, nodes, leaves), so "auto" times
    both on this model here and keeps both behind torch.cond with the measured cutoff (or only one of them when it
    wins at every timed batch size). The timing makes the program's bytes (never its outputs) depend on the
    machine: pass strategy="dispatch" with an explicit cutoff, or "gemm"/"traverse", for byte-reproducible bundles.
    """
    forest = parse_dump(booster.dump_model(), n_numeric, n_categorical)
    if strategy == "gemm":
        return TreeGemmProgram(forest).eval()
    if strategy == "traverse":
        return TreeTraverseProgram(forest).eval()
    if strategy not in ("auto", "dispatch"):
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    gemm, traverse = TreeGemmProgram(forest).eval(), TreeTraverseProgram(forest).eval()
    if strategy == "dispatch":
        if cutoff is None:
            raise ValueError("strategy='dispatch' needs a cutoff (rows per call up to which GEMM runs)")
        return TreeDispatchProgram(gemm, traverse, cutoff).eval()
    if cutoff is None:
        cutoff, _ = choose_cutoff(gemm, traverse, n_numeric, n_categorical)
    if cutoff <= 0:
        return traverse
    if cutoff >= TIMING_BATCHES[-1]:
        return gemm
    return TreeDispatchProgram(gemm, traverse, cutoff).eval()


# ----------------------------------------------------------------------------------------------- parity


def _float32_neighbours(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    with np.errstate(over="ignore"):
        return np.concatenate([v, np.nextafter(v, np.float32(np.inf)), np.nextafter(v, np.float32(-np.inf))])


def _distinct_f32(values: Sequence[float] | np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        v = np.asarray(values, dtype=np.float64).astype(np.float32)
    return v[np.sort(np.unique(v.view(np.uint32), return_index=True)[1])]  # by bits: keeps -0.0 and +0.0 apart


SPECIAL_NUMERICS = np.array(
    [np.nan, 0.0, -0.0, KZERO, -KZERO, 1e-36, -1e-36, 1e-38, -1e-38, 1e-45, -1e-45, 1e-30, -1e-30, np.inf, -np.inf],
    dtype=np.float32,
)
NEAR_ZERO = _float32_neighbours(np.array([KZERO, -KZERO, 0.0, -0.0], dtype=np.float32))
MAX_EDGE_ROWS = 200_000


def _path_base_rows(forest: Forest, base_numeric: np.ndarray, base_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every internal node, a row that reaches it: a base row (cycled) with each feature split on above the
    node moved, where needed, into the interval / category set the path demands. An edge value placed on the
    node's own feature then tests THAT node (a row elsewhere in the tree never sees its threshold)."""
    n_base = base_numeric.shape[0]
    thresholds = round_down_f32(forest.num_threshold)
    rows_n = np.empty((forest.n_internal, base_numeric.shape[1]), dtype=np.float32)
    rows_c = np.empty((forest.n_internal, base_codes.shape[1]), dtype=np.int64)
    for tree in range(forest.n_trees):
        root = int(forest.roots[tree])
        if root >= forest.n_internal:
            continue
        stack: list[tuple[int, dict[int, tuple[float, float]], dict[int, tuple[frozenset | None, frozenset]]]] = [
            (root, {}, {})
        ]
        while stack:
            node, bounds, sets = stack.pop()
            row_n, row_c = base_numeric[node % n_base].copy(), base_codes[node % n_base].copy()
            for f, (lo, hi) in bounds.items():
                v = row_n[f]
                if not (np.isfinite(v) and lo < v <= hi) and lo < hi:
                    with np.errstate(over="ignore"):
                        row_n[f] = hi if np.isfinite(hi) else np.nextafter(np.float32(lo), np.float32(np.inf))
            for g, (allowed, forbidden) in sets.items():
                c = int(row_c[g])
                if c < 0 or c in forbidden or (allowed is not None and c not in allowed):
                    if allowed is not None:
                        choice = sorted(allowed - forbidden)
                        row_c[g] = choice[0] if choice else c
                    else:
                        row_c[g] = next(k for k in range(len(forbidden) + 1) if k not in forbidden)
            rows_n[node], rows_c[node] = row_n, row_c
            for child, goes_left in ((int(forest.left[node]), True), (int(forest.right[node]), False)):
                if child >= forest.n_internal:
                    continue
                if node < forest.n_num_nodes:
                    f, t = int(forest.num_feature[node]), float(thresholds[node])
                    lo, hi = bounds.get(f, (-np.inf, np.inf))
                    new_bounds = {**bounds, f: (lo, min(hi, t)) if goes_left else (max(lo, t), hi)}
                    stack.append((child, new_bounds, sets))
                else:
                    j = node - forest.n_num_nodes
                    g, members = int(forest.cat_feature[j]), frozenset(forest.cat_sets[j])
                    allowed, forbidden = sets.get(g, (None, frozenset()))
                    if goes_left:
                        allowed = members if allowed is None else allowed & members
                    else:
                        forbidden = forbidden | members
                    stack.append((child, bounds, {**sets, g: (allowed, forbidden)}))
    return rows_n, rows_c


def edge_rows(
    forest: Forest,
    base_numeric: np.ndarray,
    base_codes: np.ndarray,
    max_code: int | None = None,
    max_rows: int = MAX_EDGE_ROWS,
) -> tuple[np.ndarray, np.ndarray]:
    """Rows where a wrong conversion routes differently from LightGBM.

    Per split, on a row that reaches it: the threshold rounded down to float32 and as the nearest float32, one
    float32 step either side, NaN (default_left / NaN-as-zero), and where the split is Zero-typed or its threshold
    sits at zero, +-0, +-kZeroThreshold and their neighbours; for a categorical split, members and non-members of
    its set, 0 (unseen), codes past the vocabulary and a negative code. Per feature, on cycled base rows: every
    special value (NaN, +-0, +-1e-35, tiny, subnormal, infinite) and every code up to past the vocabulary.
    Splits are sampled evenly if the rows would exceed max_rows.
    """
    base_numeric = np.asarray(base_numeric, dtype=np.float32)
    base_codes = np.asarray(base_codes, dtype=np.int64)
    n_base = base_numeric.shape[0]
    if n_base == 0:
        raise ValueError("edge rows need at least one base row")
    nums: list[np.ndarray] = []
    cats: list[np.ndarray] = []

    def emit(row_n: np.ndarray, row_c: np.ndarray, column: int, values: np.ndarray, categorical: bool) -> None:
        block_n = np.repeat(row_n[None, :], len(values), axis=0)
        block_c = np.repeat(row_c[None, :], len(values), axis=0)
        if categorical:
            block_c[:, column] = values
        else:
            block_n[:, column] = values
        nums.append(block_n)
        cats.append(block_c)

    top = np.zeros(max(forest.n_categorical, 1), dtype=np.int64)
    for column in range(forest.n_categorical):
        seen = [c for s, f in zip(forest.cat_sets, forest.cat_feature) if f == column for c in s]
        top[column] = max([*seen, int(base_codes[:, column].max()) if base_codes.size else 0, max_code or 0])

    # Per feature, on cycled base rows.
    for column in range(forest.n_numeric):
        values = np.concatenate([SPECIAL_NUMERICS, NEAR_ZERO])
        for i, v in enumerate(_distinct_f32(values)):
            emit(base_numeric[i % n_base], base_codes[i % n_base], column, np.array([v], np.float32), False)
    for column in range(forest.n_categorical):
        t = int(top[column])
        codes = sorted(set(range(t + 3)) | {t + 33, 2**20, 2**31 - 1, -1, -(2**31)})
        for i, c in enumerate(codes):
            emit(base_numeric[i % n_base], base_codes[i % n_base], column, np.array([c], np.int64), True)

    # Per split, on a row that reaches it.
    if forest.n_internal:
        rows_n, rows_c = _path_base_rows(forest, base_numeric, base_codes)
        per_split = 8
        nodes = np.arange(forest.n_internal)
        budget = max(1, (max_rows - sum(len(b) for b in nums)) // per_split)
        if len(nodes) > budget:
            nodes = nodes[np.linspace(0, len(nodes) - 1, budget).astype(np.int64)]
        thresholds = round_down_f32(forest.num_threshold)
        for node in nodes:
            if node < forest.n_num_nodes:
                cut, raw = thresholds[node], forest.num_threshold[node]
                with np.errstate(over="ignore"):
                    nearest = np.float32(raw)
                split_values: list[Any] = [*_float32_neighbours(np.array([cut])), nearest, np.nan]
                if forest.miss_zero[node] or abs(float(cut)) <= 1e-30:
                    split_values.extend(NEAR_ZERO)
                if np.isinf(cut):
                    split_values.extend([np.inf, -np.inf, np.finfo(np.float32).max])
                emit(rows_n[node], rows_c[node], int(forest.num_feature[node]), _distinct_f32(split_values), False)
            else:
                j = node - forest.n_num_nodes
                g, members = int(forest.cat_feature[j]), forest.cat_sets[j]
                outside = next(k for k in range(len(members) + 1) if k not in set(members))
                split_codes = sorted({*members[:1], *members[-1:], outside, 0, int(top[g]) + 1, -1, 2**31 - 1})
                emit(rows_n[node], rows_c[node], g, np.array(split_codes, dtype=np.int64), True)
    if not nums:
        return base_numeric[:0], base_codes[:0]
    return np.concatenate(nums), np.concatenate(cats)


def parity_check(
    booster: Any,
    module: nn.Module,
    numeric: np.ndarray,
    codes: np.ndarray,
    *,
    tolerance: float = PARITY_TOLERANCE,
    max_code: int | None = None,
) -> dict[str, Any]:
    """Max |module - booster.predict| on the given rows and on edge rows from the model's own thresholds.

    Raises ParityError naming the worst row (its values and both predictions) when it exceeds `tolerance`.
    Returns {"max_abs_diff", "given_max_abs_diff", "edge_max_abs_diff", "rows", "edge_rows"}.
    """
    numeric = np.asarray(numeric, dtype=np.float32)
    codes = np.asarray(codes, dtype=np.int64)
    n_numeric, n_categorical = numeric.shape[1], codes.shape[1]
    forest = parse_dump(booster.dump_model(), n_numeric, n_categorical)
    edge_n, edge_c = edge_rows(forest, numeric[:64], codes[:64], max_code=max_code)
    all_n = np.concatenate([numeric, edge_n])
    all_c = np.concatenate([codes, edge_c])
    expected = np.asarray(booster.predict(lightgbm_matrix(all_n, all_c)), dtype=np.float64)
    with torch.no_grad():  # in chunks: GEMM's intermediates grow with rows x trees x leaves
        got = np.concatenate(
            [
                module(torch.from_numpy(all_n[i : i + 2048]), torch.from_numpy(all_c[i : i + 2048])).double().numpy()
                for i in range(0, len(all_n), 2048)
            ]
        )
    if got.shape != expected.shape:
        raise ParityError(f"the program returned shape {got.shape}, booster.predict {expected.shape}")
    diff = np.abs(got - expected)
    diff[np.isnan(diff)] = np.inf  # a NaN probability is the worst mismatch, not a pass
    n_given = numeric.shape[0]
    worst = int(np.argmax(diff))
    report = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "given_max_abs_diff": float(diff[:n_given].max()) if n_given else 0.0,
        "edge_max_abs_diff": float(diff[n_given:].max()) if diff.size > n_given else 0.0,
        "rows": n_given,
        "edge_rows": int(edge_n.shape[0]),
    }
    if report["max_abs_diff"] > tolerance:
        kind = "given row" if worst < n_given else "edge row"
        index = worst if worst < n_given else worst - n_given
        raise ParityError(
            f"tree program differs from booster.predict by {diff[worst]:.3g} (> {tolerance:g}) at {kind} {index}: "
            f"numeric={all_n[worst].tolist()} codes={all_c[worst].tolist()} "
            f"program={got[worst]:.9g} booster={expected[worst]:.9g}"
        )
    return report


# ----------------------------------------------------------------------------------------------- timing


def time_program(module: nn.Module, numeric: torch.Tensor, codes: torch.Tensor, repeats: int = 50) -> dict[str, float]:
    """p50/p99 milliseconds per call (after warm-up)."""
    times = []
    with torch.no_grad():
        for _ in range(3):
            module(numeric, codes)
        for _ in range(repeats):
            start = time.perf_counter()
            module(numeric, codes)
            times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return {"p50_ms": times[len(times) // 2], "p99_ms": times[min(len(times) - 1, math.ceil(0.99 * len(times)) - 1)]}
