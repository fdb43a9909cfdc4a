"""The tree programs: a Forest (components/training/trees.py) as a torch module that torch.export takes.

Numeric float32 [N, n_numeric] raw values and int64 codes [N, n_categorical] in, the probability float32 [N] out,
routing rows exactly as LightGBM's C++ predictor does (the traps are listed in trees.py's docstring). Two
strategies, GEMM and level traversal, and a program that dispatches between them on the batch size; to_program
records the measurements behind the choice.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from components.training.model import MAX_BATCH
from components.training.trees import KZERO, Forest, parse_dump, round_down_f32

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


class _TreeProgramBase(nn.Module, abc.ABC):
    """What both strategies share: the per-column handling of missing values and category codes, and the link."""

    # buffers (register_buffer), declared for type checkers
    num_column: torch.Tensor
    num_threshold: torch.Tensor
    cat_feature: torch.Tensor
    cat_off_table: torch.Tensor

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

    @abc.abstractmethod
    def raw_score(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The ensemble's raw score (float64, before the sigmoid): how each strategy walks the trees."""

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        raw = self.raw_score(numeric, codes)  # float64: 300 leaf values add up without float32 rounding
        return torch.sigmoid(raw * self.sigmoid).to(torch.float32)


class TreeGemmProgram(_TreeProgramBase):
    """Decide every split for every row, then find each tree's leaf with one batched matrix product: a leaf is
    reached when every split on its path agrees (the +-1 decisions times the +-1 path matrix equal its depth).

    A fixed, small number of operations whatever the depth: the fastest for a few rows. The work is
    N x (all nodes) for the decisions plus N x trees x nodes x leaves for the product: slow for many rows.
    """

    # buffers (register_buffer), declared for type checkers
    cat_base: torch.Tensor
    cat_table: torch.Tensor
    node_index: torch.Tensor
    path: torch.Tensor
    leaf_depth: torch.Tensor
    leaf_values: torch.Tensor
    tree_offset: torch.Tensor

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
            stack: list[tuple[int, list[tuple[int, float]]]] = [(int(forest.roots[tree]), [])]
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
        return self.leaf_values.index_select(0, leaf.reshape(-1)).reshape(n, self.n_trees).sum(dim=1)


class TreeTraverseProgram(_TreeProgramBase):
    """Walk all trees one level per step, deciding only the nodes the rows are at (no [N, all nodes] matrix).

    Each numeric input column is first turned into a bin: how many of the column's distinct float32 thresholds lie
    below the value (`x <= t_k` iff bin <= k); category codes are bins already. Every split is then one lookup in
    a boolean table (split, bin) -> goes left, numeric and categorical alike. Seven small-table lookups per level
    and row: the fastest for many rows, but one step per level of the deepest tree (operation overhead for one row).
    """

    # buffers (register_buffer), declared for type checkers
    bin_source: torch.Tensor
    bounds: torch.Tensor
    bin_top: torch.Tensor
    zcol: torch.Tensor
    base: torch.Tensor
    table: torch.Tensor
    child: torch.Tensor
    roots: torch.Tensor
    leaf_value: torch.Tensor

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
        table = np.concatenate(blocks + [np.zeros(longest, dtype=bool)])
        children = _children(forest)
        # Positions as int32 where every one fits (the flat bins of MAX_BATCH rows, the table, the nodes): the walk
        # is memory-bound, and half-width indices make each level ~1.5x faster (measured, 380 rows x 200 trees).
        width = self.n_bin_columns + max(forest.n_categorical, 1)
        largest = max(MAX_BATCH * width, len(table) + width, len(children))
        index = torch.int32 if largest < 2**31 else torch.int64
        self.register_buffer("zcol", _t(zcol, index))
        self.register_buffer("base", _t(base, index))
        self.register_buffer("table", _t(table, torch.bool))
        self.register_buffer("child", _t(children, index))
        self.register_buffer("roots", _t(forest.roots, index))
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
        # Every lookup is an index_select on flat [N * trees] positions: torch's advanced indexing (`t[idx]`) on a
        # 2-D index costs 4-5x as much per element on CPU (measured, torch 2.13: 390 us vs 88 us for 380 x 200).
        n = numeric.shape[0]
        if n > MAX_BATCH:  # int32 positions fit MAX_BATCH rows (the exported program's bound): eager calls go in parts
            parts = [self.raw_score(numeric[i : i + MAX_BATCH], codes[i : i + MAX_BATCH]) for i in range(0, n, MAX_BATCH)]
            return torch.cat(parts)
        node = self.roots.unsqueeze(0).expand(n, self.n_trees).reshape(-1)
        if self.n_internal:
            z = self.bins(numeric, codes).to(self.zcol.dtype)
            flat_z = z.reshape(-1)
            row_start = (torch.arange(n, dtype=self.zcol.dtype) * z.shape[1]).unsqueeze(1).expand(n, self.n_trees).reshape(-1)
            for _ in range(self.depth):
                column = flat_z.index_select(0, row_start + self.zcol.index_select(0, node))
                left = self.table.index_select(0, self.base.index_select(0, node) + column)
                node = self.child.index_select(0, torch.add(left, node, alpha=2))
        return self.leaf_value.index_select(0, node - self.n_internal).reshape(n, self.n_trees).sum(dim=1)


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

    Both strategies' cost is data-independent (fixed depth loop, all splits decided), so random rows time them.
    They are timed as the bundle runs them, exported (torch.export, dynamic batch): the exported traversal pays
    more per call than the eager one (one batch-1 row of 300 trees: eager 0.52 ms, exported 0.89 ms; GEMM 0.36 /
    0.57 ms), so eager timings tie where the served programs do not."""
    from components.training.model import export_dynamic

    gemm = export_dynamic(gemm, n_numeric, n_categorical).module()
    traverse = export_dynamic(traverse, n_numeric, n_categorical).module()
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
        # exported program), which timing each strategy alone does not show.
        if best["gemm"] <= GEMM_MARGIN * best["traverse"] and cutoff == max([0, *[b for b in batches if b < n]]):
            cutoff = n
    return cutoff, timings


def to_program(booster: Any, n_numeric: int, n_categorical: int, strategy: str = "auto", cutoff: int | None = None) -> nn.Module:
    """The booster as a torch module (numeric float32, codes int64 -> probability float32 [N]).

    Why two strategies. Measured (300 trees, depth 15, 16 numeric + 4 categorical columns; exported programs,
    p50 ms, 1 thread, a shared 2-core machine; 2026-12-02, after the traversal moved to flat index_select lookups):
                   batch 1   batch 16   batch 380   batch 1000
        gemm        0.53      2.7        48          228
        traverse    1.30      2.4        21           52      (advanced-indexing version: 1.55 / 4.7 / 55 / 141)
    GEMM wins for one row (a fixed ~15 operations; the traversal pays ~8 per level of the deepest tree), the
    traversal wins from ~16 rows on and by 4x at 1,000 (GEMM decides every node for every row and multiplies by
    all leaves). Neither dominates, and the crossover depends on the model (depth, nodes, leaves), so "auto" times
    both, exported, on this model here and keeps both behind torch.cond with the measured cutoff (or only one when it
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
