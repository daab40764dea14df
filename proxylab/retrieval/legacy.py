"""Indexes made before encoder ids were recorded: keep one only when its vectors provably are these encoders'.

Such an index (``ModelIndex.legacy``) records no encoder id, and the shipped encoders have been retrained since
with the same dimension, so its vectors may come from older encoders. Taking on the current encoders' id on
trust would mix old vectors with new ones and record the mix as fine. The proof used here: re-encode the stored
signatures of a few of its models and compare with the stored vectors. Encoding is deterministic byte for byte
on one machine; ``ATOL`` only absorbs float differences between BLAS builds, far below what different weights
give (distinct encoders' vectors differ by ~1e-1 per component).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from proxylab.errors import ProxylabError
from proxylab.retrieval.index import EncoderMismatchError, LegacyIndexError, ModelIndex
from proxylab.utils import PathLike

ATOL = 1e-5  # per component of unit vectors
CHECKED_MODELS = 3  # stored models re-encoded (the lowest ids that have a signature file)


def adopt_if_vectors_match(index: ModelIndex, signatures_dir: Optional[PathLike], encoders) -> bool:
    """Record ``encoders.id`` on a legacy index after checking its vectors; False when there is nothing to do.

    Looks for ``signatures_dir/<name>.npz`` of the index's models (a zoo folder's ``signatures/``), re-encodes up
    to CHECKED_MODELS of them and compares with the stored vectors. Raises LegacyIndexError when no stored model
    has a signature there (nothing to prove it with), EncoderMismatchError when a vector differs (other
    encoders made the index); the index is left untouched in both cases.
    """
    from proxylab.retrieval.signature import Signature

    if not index.legacy:
        return False
    folder = Path(signatures_dir) if signatures_dir is not None else None
    found = []
    if folder is not None and folder.is_dir():
        for row in sorted(index.list(), key=lambda r: r["id"]):
            path = folder / f"{row['name']}.npz"
            if path.is_file():
                found.append((row, path))
            if len(found) == CHECKED_MODELS:
                break
    if not found:
        where = f"in '{folder}'" if folder is not None else "(no signature folder: the index is not inside a zoo)"
        raise LegacyIndexError(
            f"index '{index.path}' was made before proxylab recorded encoder ids and none of its {len(index)} models "
            f"has a stored signature {where} to check that encoders {encoders.id} made its vectors; rebuild it with "
            "the current encoders (a zoo index: delete ZOO/index and rerun `proxylab zoo build --out ZOO`)")
    for row, path in found:
        fresh = encoders.encode_signature(Signature.load(path))
        stored = index.vector(row["id"])
        gap = (float(np.max(np.abs(fresh.astype(np.float64) - stored.astype(np.float64))))
               if fresh.shape == stored.shape else float("inf"))
        if not gap <= ATOL:
            raise EncoderMismatchError(
                f"index '{index.path}' was made before proxylab recorded encoder ids, and its vector of model "
                f"'{row['name']}' is not what encoders {encoders.id} make from that model's signature (largest "
                f"difference {gap:.3g}): older encoders made it. Rebuild it with the current encoders (a zoo "
                "index: delete ZOO/index and rerun `proxylab zoo build --out ZOO`), or use the encoders it was "
                "built with (--encoders FILE)")
    index.adopt_encoder(encoders.id)
    return True


def open_proven(path: PathLike, signatures_dir: Optional[PathLike], encoders) -> ModelIndex:
    """Open an index for writing with `encoders`: a legacy one is proven by ``adopt_if_vectors_match`` (or refused)
    before anything is said about it, so a caller that can prove it never sees a LegacyIndexWarning; then the
    usual encoder check. The index is closed again when either check refuses."""
    index = ModelIndex.open(path)  # no encoder id yet: opening a legacy index this way does not warn
    try:
        adopt_if_vectors_match(index, signatures_dir, encoders)
        index.check_encoder(encoders.id, "opened")
    except ProxylabError:
        index.close()
        raise
    return index
