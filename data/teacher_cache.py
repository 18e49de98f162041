"""The teacher cache (train.py --teacher_cache DIR): the teachers' SR outputs on every fixed training patch, computed
once, read back by memory map, and verified before every reuse, never trusted.

    <dir>/teacher_outputs.npy   (N, T, 2, sH, sW, 3) float32 or float16: patch, teacher, view, HR pixels, RGB
    <dir>/meta.json             {'format', 'complete', 'source': {...}, 'arrays': {file: {shape, dtype, bytes}}, ...}

`source` is what the outputs were built from (teacher networks and file SHA-256, scale, the training set's identity and
digest, the LR patch the teachers saw, storage dtype, precision); `arrays` records every array file's shape, dtype and
size in bytes. `check_teacher_cache` compares both with the run and the files on disk (size, then the .npy header)
before the first step, so a changed input or a truncated or damaged file is reported by name instead of failing
inside numpy at the first batch. The teachers always see whole patches: --lr_crop crops their outputs at read time,
like the ground truth, so the crop is not part of what a cache depends on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

FORMAT = 2           # meta.json layout; 1 (no 'format' field) recorded neither array sizes nor the trainset digest
ARRAY_FILE, META_FILE = 'teacher_outputs.npy', 'meta.json'
# Words for the fields of `source` in messages
FIELD_WORDS = {'teacher_networks': 'the teachers\' networks', 'teacher_sha256': 'the teacher files (SHA-256)',
               'scale_factor': 'the scale', 'trainset': 'the training set', 'trainset_patches': 'the number of patches',
               'trainset_digest': 'the training patches (file names, sizes and modification times, or pixels)',
               'lr_patch': 'the LR patch the teachers saw', 'dtype': 'the storage dtype',
               'precision': 'the teachers\' precision (--amp)'}
ABSENT, UNFINISHED, VALID, INVALID = 'absent', 'unfinished', 'valid', 'invalid'


class TeacherCache:
    """The `extras` source of a dataset (data/patches.py StereoPatches): `cache(index)` -> [(left, right)] per
    teacher, HxWx3 arrays, un-augmented (the dataset augments them with the HR views). Picklable for DataLoader
    workers (each opens its own memory map). Open it after `check_teacher_cache` found it VALID."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ARRAY_FILE
        self.array = None

    def __getstate__(self):
        return {'path': self.path, 'array': None}

    def __call__(self, index: int) -> list[tuple[np.ndarray, np.ndarray]]:
        if self.array is None:
            try:
                self.array = np.load(self.path, mmap_mode='r')
            except (OSError, ValueError):    # (numpy's own words would not name the file)
                raise ValueError(f'teacher cache {self.path} cannot be read any more (it was verified at start-up: '
                                 f'changed during the run?); rerun with --teacher_cache_rebuild') from None
        return [(np.asarray(t[0]), np.asarray(t[1])) for t in self.array[index]]


def read_teacher_meta(folder: str | Path) -> dict | None:
    """meta.json of a teacher cache, None when there is none or it is not a JSON object."""
    try:
        meta = json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def array_record(path: Path) -> dict:
    """{'shape', 'dtype', 'bytes'} of a .npy file from its header and size; ValueError (naming the file, never
    numpy's message) when the header cannot be read."""
    try:
        with open(path, 'rb') as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
    except (ValueError, SyntaxError, TypeError, KeyError, EOFError):
        raise ValueError(f'{path}: damaged header (not a readable .npy array header)') from None
    if fortran_order or dtype.hasobject:
        raise ValueError(f'{path}: damaged header (fortran order or object dtype: never written by this cache)')
    return {'shape': list(shape), 'dtype': dtype.str, 'bytes': offset + int(np.prod(shape)) * dtype.itemsize}


def _short(value) -> str:
    """A recorded value for a message: long hex digests cut to 12 characters."""
    if isinstance(value, list):
        return '[' + ', '.join(_short(v) for v in value) + ']'
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + '...'
    return repr(value)


def check_teacher_cache(folder: str | Path, source: dict, shape: tuple[int, ...]) -> tuple[str, str]:
    """(state, reason) of the cache in `folder` for a run whose inputs are `source` and whose outputs array has
    `shape` (N, T, 2, sH, sW, 3). States: ABSENT (no cache there: build it), UNFINISHED (a build that was interrupted:
    build it again), VALID (everything matches: reuse it), INVALID (`reason`: one line naming the file and the field
    that differs, or the damage)."""
    folder = Path(folder)
    meta_path, array_path = folder / META_FILE, folder / ARRAY_FILE
    if folder.exists() and not folder.is_dir():
        return INVALID, f'{folder} is not a folder'
    if not meta_path.exists():
        if not folder.exists() or not any(folder.iterdir()):
            return ABSENT, ''
        if array_path.exists():
            return INVALID, f'{meta_path} is missing (the record of what {array_path.name} was built from)'
        return INVALID, f'{folder} is not a teacher cache (no {META_FILE}) and is not empty'
    meta = read_teacher_meta(folder)
    if meta is None:
        return INVALID, f'{meta_path}: damaged (not a JSON object)'
    if meta.get('complete') is False:
        return UNFINISHED, f'{meta_path}: its build was interrupted'
    if meta.get('format') != FORMAT:
        return INVALID, (f'{meta_path}: format differs (cache {meta.get("format", 1)!r}, this code {FORMAT}): built by '
                         f'an older version, whose record cannot be verified')
    recorded = meta.get('source') or {}
    for key, value in source.items():
        if recorded.get(key) != value:
            return INVALID, (f'{meta_path}: {key} differs (cache {_short(recorded.get(key))}, this run '
                             f'{_short(value)}): {FIELD_WORDS.get(key, key)} changed')
    arrays = meta.get('arrays') or {}
    if ARRAY_FILE not in arrays:
        return INVALID, f'{meta_path}: records no {ARRAY_FILE}'
    expected = {'shape': list(shape), 'dtype': np.dtype(source['dtype']).str}
    for name, record in arrays.items():
        path = folder / name
        if not path.is_file():
            return INVALID, f'{path} is missing'
        size = path.stat().st_size
        if size != record.get('bytes'):
            return INVALID, (f'{path}: {size} bytes, {META_FILE} records {record.get("bytes")}'
                             + (' (truncated)' if size < (record.get('bytes') or 0) else ''))
        try:
            found = array_record(path)
        except ValueError as err:
            return INVALID, str(err)
        for key in ('shape', 'dtype', 'bytes'):
            if found[key] != record.get(key):
                return INVALID, f'{path}: {key} in its header {found[key]}, {META_FILE} records {record.get(key)}'
        if name == ARRAY_FILE:
            for key in ('shape', 'dtype'):
                if found[key] != expected[key]:
                    return INVALID, f'{path}: {key} differs (cache {found[key]}, this run {expected[key]})'
    return VALID, ''


def write_teacher_cache(dataset, predict, folder: str | Path, source: dict, info: dict | None = None,
                        batch_size: int = 8) -> None:
    """One pass over `dataset` (data/patches.py StereoPatches, read whole, without augmentation, channel shuffle or
    crop) writing every patch's teacher outputs: predict(lr_left, lr_right) -> list of (sr_left, sr_right)
    (B, 3, sH, sW) tensors, one per teacher, stored as `source['dtype']`. Any previous cache files in `folder` are
    removed first; meta.json says 'complete': False until the array is on disk and recorded, so an interrupted
    build is redone, never trusted. `info`: extra fields for people (e.g. the teachers' paths), not checked."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, ARRAY_FILE):
        (folder / name).unlink(missing_ok=True)
    meta = {'format': FORMAT, 'complete': False, 'source': source, **(info or {})}
    _write_json(folder / META_FILE, meta)
    saved = dataset.augment, dataset.channel_shuffle, dataset.extras, dataset.crop
    dataset.augment, dataset.channel_shuffle, dataset.extras, dataset.crop = False, False, None, None
    array_path = folder / ARRAY_FILE
    try:
        hr = dataset[0][0]
        array = None
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        start = 0
        for batch in tqdm(loader, desc=f'teacher cache {folder}', unit='batch'):
            outputs = predict(batch[2], batch[3])
            if array is None:
                array = np.lib.format.open_memmap(array_path, mode='w+', dtype=source['dtype'],
                                                  shape=(len(dataset), len(outputs), 2, *hr.shape[1:], 3))
            stacked = torch.stack([torch.stack([left, right], 1) for left, right in outputs], 1)  # B T 2 3 H W
            if stacked.shape[-2:] != hr.shape[1:]:
                raise ValueError(f'teacher outputs of {tuple(stacked.shape[-2:])} pixels for HR patches of '
                                 f'{tuple(hr.shape[1:])}: the teacher cache needs patches of one size')
            array[start:start + stacked.shape[0]] = stacked.permute(0, 1, 2, 4, 5, 3).float().cpu().numpy()
            start += stacked.shape[0]
        array.flush()
        del array
        with open(array_path, 'rb') as f:       # on disk before meta.json says so
            os.fsync(f.fileno())
    finally:
        dataset.augment, dataset.channel_shuffle, dataset.extras, dataset.crop = saved
    _write_json(folder / META_FILE, {**meta, 'complete': True, 'arrays': {ARRAY_FILE: array_record(array_path)}})


def _write_json(path: Path, value: dict) -> None:
    """Whole or not at all: a temporary file renamed over `path`."""
    partial = path.with_name(path.name + '.partial')
    partial.write_text(json.dumps(value, indent=2))
    os.replace(partial, path)
