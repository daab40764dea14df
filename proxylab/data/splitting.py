"""Stratified, seeded, duplicate-aware train/calib/test splits.

Samples are put in a class-interleaved order (each class's shuffled members spread evenly along the
sequence, classes taking turns in one fixed random order) and the order is cut into consecutive segments.
Every segment then holds each class in proportion to within one sample, and the first n rows of any split
are themselves nearly class-balanced, so ``Split.subset(n)`` is a stratified subsample.

Some packaged sets repeat images (animal-mnist has 284 exact duplicate pairs). Members of a duplicate group
are swapped into one segment so no image appears in two splits; swaps are with same-class singletons, so
per-class counts and split sizes stay exact.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Sequence

import numpy as np


def row_hashes(x: np.ndarray) -> List[bytes]:
    """A digest per sample of its exact bytes (equal images <=> equal digests)."""
    flat = np.ascontiguousarray(x.reshape(len(x), -1))
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat]


def duplicate_groups(x: np.ndarray) -> np.ndarray:
    """Group id per sample; samples with identical pixels share an id."""
    ids: Dict[bytes, int] = {}
    return np.array([ids.setdefault(h, len(ids)) for h in row_hashes(x)], dtype=np.int64)


def _interleaved_order(y: np.ndarray, groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(y)
    turn = rng.permutation(len(classes))  # fixed class order inside every "round"
    keys_pos, keys_turn, members = [], [], []
    for ci, c in enumerate(classes):
        idx = np.nonzero(y == c)[0]
        # Shuffle whole duplicate groups, so a group's members get neighbouring ranks.
        g = groups[idx]
        uniq = np.unique(g)
        rank_of_group = dict(zip(uniq.tolist(), rng.permutation(len(uniq)).tolist()))
        tiebreak = rng.random(len(idx))
        idx = idx[np.lexsort((tiebreak, [rank_of_group[v] for v in g.tolist()]))]
        members.append(idx)
        keys_pos.append((np.arange(len(idx)) + 0.5) / len(idx))
        keys_turn.append(np.full(len(idx), turn[ci]))
    members_all = np.concatenate(members)
    return members_all[np.lexsort((np.concatenate(keys_turn), np.concatenate(keys_pos)))]


def _repair_groups(assign: np.ndarray, y: np.ndarray, groups: np.ndarray, position: np.ndarray) -> None:
    """Move every duplicate group into one split by swapping with same-class singletons (in place)."""
    counts = np.bincount(groups)
    singleton = counts[groups] == 1
    for gid in np.nonzero(counts > 1)[0]:
        idx = np.nonzero(groups == gid)[0]
        target = assign[idx[np.argmin(position[idx])]]  # the split of the earliest member
        for i in idx:
            if assign[i] == target:
                continue
            # A singleton of i's class in the target split, nearest to the cut, takes i's place.
            cand = np.nonzero(singleton & (assign == target) & (y == y[i]))[0]
            if len(cand) == 0:
                raise ValueError("cannot keep duplicate images in one split: too few distinct images")
            j = cand[np.argmin(np.abs(position[cand] - position[i]))]
            assign[i], assign[j] = target, assign[i]
            position[i], position[j] = position[j], position[i]


def stratified_split(y: np.ndarray, sizes: Sequence[int], seed: int, x: np.ndarray = None) -> List[np.ndarray]:
    """Disjoint index arrays of the given sizes (sum must equal len(y)), stratified by class.

    With ``x`` given, exact duplicate images are kept within one split.
    """
    y = np.asarray(y)
    if sum(sizes) != len(y):
        raise ValueError(f"split sizes {list(sizes)} sum to {sum(sizes)}, not to the {len(y)} samples")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), 0x5B117]))
    groups = duplicate_groups(x) if x is not None else np.arange(len(y))
    order = _interleaved_order(y, groups, rng)
    position = np.empty(len(y), np.int64)
    position[order] = np.arange(len(y))
    cuts = np.cumsum([0, *sizes])
    assign = np.searchsorted(cuts, position, side="right") - 1
    if x is not None and len(np.unique(groups)) < len(groups):
        _repair_groups(assign, y, groups, position)
    out = []
    for k in range(len(sizes)):
        idx = np.nonzero(assign == k)[0]
        out.append(idx[np.argsort(position[idx], kind="stable")])
    return out
