"""Saving and loading models as JSON metadata plus named numeric arrays, never a pickle.

``model.json`` holds the generator's name, parameters, schema, plan and any small
numbers; ``weights.safetensors`` holds arrays (copula correlations, neural weights).
Without the safetensors package the arrays go to ``weights.npz``, read back with
``allow_pickle=False``, so loading a model never runs code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from microdb.errors import ConfigError

FORMAT_VERSION = 1
META_FILE = "model.json"
SAFETENSORS_FILE = "weights.safetensors"
NPZ_FILE = "weights.npz"


def save_model(directory: str | Path, meta: dict, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``meta`` and ``arrays`` into ``directory`` (created), replacing a previous model."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    try:
        from safetensors.numpy import save_file
    except ImportError:
        save_file = None
    for stale in (SAFETENSORS_FILE, NPZ_FILE):
        (path / stale).unlink(missing_ok=True)
    if save_file is not None:
        save_file(arrays, str(path / SAFETENSORS_FILE))
        weights = SAFETENSORS_FILE
    else:
        np.savez(path / NPZ_FILE, **arrays)
        weights = NPZ_FILE
    document = {"format_version": FORMAT_VERSION, "weights": weights, **meta}
    tmp = path / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(document, indent=1, sort_keys=True, allow_nan=False))
    os.replace(tmp, path / META_FILE)
    return path


def load_model(directory: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a model written by ``save_model``: (metadata, arrays)."""
    path = Path(directory)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise ConfigError(f"synth model: no {META_FILE} in {path}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"synth model: {meta_path} is not valid JSON ({exc})") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"synth model: {meta_path} has format_version {meta.get('format_version')!r}, "
                          f"this microdb reads {FORMAT_VERSION}")
    weights = path / meta.get("weights", "")
    if meta.get("weights") == SAFETENSORS_FILE:
        try:
            from safetensors.numpy import load_file
        except ImportError as exc:
            raise ConfigError(f"synth model: {weights} needs the safetensors package "
                              "(pip install 'microdb[synth]')") from exc
        arrays = load_file(str(weights))
    elif meta.get("weights") == NPZ_FILE:
        with np.load(weights, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        raise ConfigError(f"synth model: {meta_path} names no known weights file")
    return meta, arrays
