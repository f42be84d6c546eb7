"""A LightGBM binary model as flat arrays, evaluated by a compiled loop (numba).

Why: `Booster.predict` costs several microseconds a row on the worker's small batches (its
per-call setup and generic paths), which alone would exceed the detector's CPU budget. The
trees of a binary model are plain numerical splits (`x <= threshold` goes left) whose leaf
values add up to a raw score; P = sigmoid(raw). The detector's features are never NaN, so
LightGBM's missing-value routing never applies (a tree that needs it is refused, so the
result cannot silently differ). Tests check the equality with `Booster.predict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np

from pipelines.errors import ConfigError


@dataclass(frozen=True)
class FlatTrees:
    """Nodes of every tree; an inner node's children sit side by side (left, then right)."""

    roots: np.ndarray  # int32 [trees]
    depth: np.ndarray  # int32 [trees]: longest root-to-leaf path (kept for diagnostics)
    feature: np.ndarray  # int32 [nodes] (0 for a leaf)
    threshold: np.ndarray  # float64 [nodes] (+inf for a leaf: it never moves)
    child: np.ndarray  # int32 [nodes]: the left child, the right one is child + 1 (a leaf: itself)
    value: np.ndarray  # float64 [nodes]: a leaf's value
    sigmoid: float

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """P(fraud) per row of a float32 feature matrix."""
        x = np.require(matrix, np.float32, ["C", "W", "A"])
        out = np.empty(len(x), dtype=np.float64)
        _predict(x, self.roots, self.depth, self.feature, self.threshold, self.child, self.value, self.sigmoid, out)
        return out


def flatten_lightgbm(booster: Any) -> FlatTrees:
    """The trees of a LightGBM binary booster as FlatTrees; ConfigError for what they cannot represent."""
    dump = booster.dump_model()
    objective = str(dump.get("objective", ""))
    if not objective.startswith("binary"):
        raise ConfigError(f"fraud model has objective {objective!r}; only binary LightGBM models are supported")
    sigmoid = 1.0
    for part in objective.split():
        if part.startswith("sigmoid:"):
            sigmoid = float(part.split(":", 1)[1])
    feature: list[int] = []
    threshold: list[float] = []
    child: list[int] = []
    value: list[float] = []

    def new_node() -> int:
        feature.append(0)
        threshold.append(math.inf)
        child.append(len(child))
        value.append(0.0)
        return len(feature) - 1

    def fill(at: int, node: dict[str, Any]) -> int:
        """Fill node `at` from LightGBM's `node`; returns the subtree's depth."""
        if "leaf_value" in node:
            value[at] = float(node["leaf_value"])
            return 0
        if node.get("decision_type") != "<=" or node.get("missing_type") not in ("None", "NaN"):
            raise ConfigError(
                f"fraud model has a split the detector cannot evaluate ({node.get('decision_type')}, "
                f"missing {node.get('missing_type')})",
                hint="train it with `nova fraud train` (numerical features only)",
            )
        feature[at] = int(node["split_feature"])
        threshold[at] = float(node["threshold"])
        left = new_node()
        new_node()
        child[at] = left
        return 1 + max(fill(left, node["left_child"]), fill(left + 1, node["right_child"]))

    roots, depths = [], []
    for tree in dump["tree_info"]:
        root = new_node()
        depths.append(fill(root, tree["tree_structure"]))
        roots.append(root)
    return FlatTrees(
        roots=np.asarray(roots, dtype=np.int32),
        depth=np.asarray(depths, dtype=np.int32),
        feature=np.asarray(feature, dtype=np.int32),
        threshold=np.asarray(threshold, dtype=np.float64),
        child=np.asarray(child, dtype=np.int32),
        value=np.asarray(value, dtype=np.float64),
        sigmoid=sigmoid,
    )


_BLOCK = 256  # rows per pass over the trees: their features stay in cache while every tree visits them


@numba.njit(cache=True, nogil=True)
def _predict(  # pragma: no cover
    x: np.ndarray,
    roots: np.ndarray,
    depth: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    child: np.ndarray,
    value: np.ndarray,
    sigmoid: float,
    out: np.ndarray,
) -> None:
    """A block of rows at a time goes through every tree (tree and rows stay in cache).

    Each step is branch-free (right child = left + (x > threshold)); a leaf points at itself.
    Stepping all rows in lockstep for `depth` steps measured slower: trees are lopsided.
    """
    n = x.shape[0]
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        for i in range(start, stop):
            out[i] = 0.0
        for t in range(len(roots)):
            root = roots[t]
            for i in range(start, stop):
                node = root
                nxt = child[node]
                while nxt != node:
                    node = nxt + (np.float64(x[i, feature[node]]) > threshold[node])
                    nxt = child[node]
                out[i] += value[node]
        for i in range(start, stop):
            out[i] = 1.0 / (1.0 + math.exp(-sigmoid * out[i]))
