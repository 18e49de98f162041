"""Pretrained weights by name: `resolve_weights('cvhssr-t_x4')` returns the path of the authors' file, checked.

A name is a release of `models/releases.py` (`<network>_x<scale>`, or the file name the authors ship, e.g.
`CVHSSR_Tx4.pth`). Its file is looked for, by the authors' file name, in the project's `checkpoints/` and then in the
cache folder: `$SR_WEIGHTS_DIR` when set, else `~/.cache/stereo-sr/weights`. A file found is checked against the
digests the table knows (SHA-256, or the Git blob id of the authors' repository); a mismatch is refused. Nothing is
downloaded unless asked (`download=True`, the scripts' `--download_weights`); downloads go to the cache folder through
a temporary file that is renamed only after its digest checks, and every connect and read times out.
Scripts call `resolve_checkpoint` for their `--checkpoint`: a release name also gives the network and the scale.

    python weights.py                       # every release: where it is found, or where to get it
    python weights.py cvhssr-t_x4 --download_weights
    python weights.py --write_docs          # regenerate the table of docs/weights.md from models/releases.py
"""
from __future__ import annotations

import argparse
import difflib
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

from models.releases import RELEASES, Release, markdown_table
from utils import UsageError, positive_float, run_script

ROOT = Path(__file__).resolve().parent
CHECKPOINTS = ROOT / 'checkpoints'
CACHE_ENV = 'SR_WEIGHTS_DIR'
DEFAULT_CACHE = Path('~/.cache/stereo-sr/weights')
# Seconds a download may wait to connect or for its next bytes; a silent server fails after this, never hangs.
DOWNLOAD_TIMEOUT_S = 30.0
DOWNLOAD_FLAG = '--download_weights'    # the scripts' flag for download=True, named in the messages
BLOCK = 1 << 20
DOC = ROOT / 'docs' / 'weights.md'
DOC_BEGIN = '<!-- releases table: generated from models/releases.py by `python weights.py --write_docs` -->'
DOC_END = '<!-- end of releases table -->'


class WeightsNotFoundError(FileNotFoundError):
    """A release's file is not in any folder (and was not downloaded): the message says where to get it."""


class WeightsDigestError(ValueError):
    """A release's file does not have the digest the table records: a different or damaged file."""


class WeightsDownloadError(OSError):
    """A download failed (no network, HTTP error, timeout, truncated): the message names the URL and the folder."""


def cache_dir() -> Path:
    """The cache folder: $SR_WEIGHTS_DIR when set, else ~/.cache/stereo-sr/weights."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def default_folders() -> tuple[Path, ...]:
    """Where release files are looked for, in order: the project's checkpoints/, then the cache folder."""
    return CHECKPOINTS, cache_dir()


def find_release(name_or_path: str | os.PathLike, releases: Mapping[str, Release] | None = None) -> Release | None:
    """The release `name_or_path` names (a release name or the authors' file name), None for anything else."""
    releases = RELEASES if releases is None else releases
    text = os.fspath(name_or_path)
    if text in releases:
        return releases[text]
    return next((r for r in releases.values() if r.file == text), None)


class _Digests:
    """SHA-256 and Git blob id (SHA-1 of b'blob <size>\\0' + content) of a byte stream, computed in one pass."""

    def __init__(self, size: int):
        self.sha256 = hashlib.sha256()
        self.git_blob = hashlib.sha1(b'blob %d\0' % size, usedforsecurity=False)

    def update(self, block: bytes) -> None:
        self.sha256.update(block)
        self.git_blob.update(block)


def file_digests(path: str | os.PathLike) -> tuple[str, str]:
    """(SHA-256, Git blob id) of a file, hex."""
    digests = _Digests(os.path.getsize(path))
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(BLOCK), b''):
            digests.update(block)
    return digests.sha256.hexdigest(), digests.git_blob.hexdigest()


def digest_mismatch(release: Release, sha256: str, git_blob: str) -> str | None:
    """None when the digests agree with what `release` records (or it records none); else what differs."""
    if release.sha256 and sha256 != release.sha256:
        return f'SHA-256 {sha256}, expected {release.sha256}'
    if release.git_blob and git_blob != release.git_blob:
        return f'Git blob id {git_blob}, expected {release.git_blob}'
    return None


def check_file(path: Path, release: Release) -> Path:
    """`path` when its digests are those of `release`; WeightsDigestError naming both digests and the file."""
    if release.sha256 or release.git_blob:
        wrong = digest_mismatch(release, *file_digests(path))
        if wrong:
            raise WeightsDigestError(f'{path} is not the authors\' {release.name} ({release.file}): {wrong}. Delete '
                                     f'it and download it again from {release.where}')
    return path


def missing_message(release: Release, folders: Iterable[Path], download: bool = False) -> str:
    """One line: where `release`'s file was looked for, where to get it and the folder to put it in."""
    folders = list(folders)
    looked = ' or '.join(f'{f}/' for f in folders)
    if release.direct_url:
        how = f'download {release.direct_url} into {folders[-1]}/' + ('' if download else f' (or pass {DOWNLOAD_FLAG})')
    else:
        hint = f'; {DOWNLOAD_FLAG} cannot fetch it (no direct URL)' if download else ''
        how = (f'no direct download: get it by hand from {" or ".join(release.pages)} and put it in {folders[-1]}/'
               + hint)
    return f'{release.name}: {release.file} not found in {looked}; {how}'


def download_release(release: Release, folder: Path, timeout: float = DOWNLOAD_TIMEOUT_S,
                     progress: bool = True) -> Path:
    """Download `release` into `folder` and return its path. The bytes go to a temporary file in `folder`, renamed to
    the authors' file name only once complete and matching the recorded digests; a failure leaves nothing behind.
    `timeout`: seconds to wait for the connection and for each read (so a silent server fails, never hangs)."""
    from tqdm import tqdm
    if not release.direct_url:
        raise WeightsNotFoundError(missing_message(release, [folder], download=True))
    url, target = release.direct_url, folder / release.file
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f'.{release.file}.', suffix='.part')
    try:
        with os.fdopen(handle, 'wb') as out:
            request = urllib.request.Request(url, headers={'User-Agent': 'stereo-sr-weights'})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get('Content-Length')
                total = int(length) if length and length.isdigit() else release.size
                digests = _Digests(total) if total is not None else None     # unknown size: hashed after
                with tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, desc=release.file,
                          disable=not progress, file=sys.stderr) as bar:
                    for block in iter(lambda: response.read(BLOCK), b''):
                        out.write(block)
                        if digests is not None:
                            digests.update(block)
                        bar.update(len(block))
        size = os.path.getsize(temporary)
        if total is not None and size != total:
            raise WeightsDownloadError(f'{release.name}: the download from {url} stopped at {size} of {total} bytes; '
                                       f'retry, or download it by hand into {folder}/')
        sha256, git_blob = (digests.sha256.hexdigest(), digests.git_blob.hexdigest()) if digests is not None \
            else file_digests(temporary)
        wrong = digest_mismatch(release, sha256, git_blob)
        if wrong:
            raise WeightsDigestError(f'{release.name}: the file downloaded from {url} is not {release.file}: {wrong}; '
                                     f'it was not kept')
        os.replace(temporary, target)
        return target
    except (WeightsDigestError, WeightsDownloadError):
        raise
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts, refused, a bad response
        reason = getattr(err, 'reason', None) or err
        raise WeightsDownloadError(f'{release.name}: could not download {url} ({type(err).__name__}: {reason}); '
                                   f'download it by hand into {folder}/') from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def resolve_weights(name_or_path: str | os.PathLike, download: bool = False, folders: Iterable[Path] | None = None,
                    timeout: float = DOWNLOAD_TIMEOUT_S, progress: bool = True,
                    releases: Mapping[str, Release] | None = None) -> Path:
    """The weights file that `name_or_path` names.

    An existing path is returned as it is. A release name (or the authors' file name) is looked for in `folders`
    (default: checkpoints/, then the cache folder) and checked against the recorded digests (WeightsDigestError
    on a mismatch). Missing: with `download`, downloaded into the last folder; otherwise WeightsNotFoundError with
    one line naming the URL (or the authors' page) and the folder. Anything else: FileNotFoundError.
    `releases`: the table to look names up in (default models.releases.RELEASES).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise FileNotFoundError(f'{path} is a folder, not a checkpoint file')
    folders = default_folders() if folders is None else tuple(Path(f) for f in folders)
    release = find_release(name_or_path, releases)
    if release is None:
        text = os.fspath(name_or_path)
        if os.sep in text or '/' in text or path.suffix:      # meant as a path
            named = find_release(path.name, releases)
            hint = f' (it is the authors\' {named.name}: pass its release name to look for it)' if named else ''
            raise FileNotFoundError(f'checkpoint {text} not found{hint}')
        names = list(RELEASES if releases is None else releases)
        close = difflib.get_close_matches(text, names, n=3)
        known = f'did you mean {", ".join(close)}?' if close else f'releases: {", ".join(names)}'
        raise FileNotFoundError(f'checkpoint {text} not found: no such file, nor a release of that name; {known} '
                                f'(python weights.py lists the releases)')
    for folder in folders:
        candidate = folder / release.file
        if candidate.is_file():
            return check_file(candidate, release)
    if not download or not release.direct_url:
        raise WeightsNotFoundError(missing_message(release, folders, download))
    return download_release(release, folders[-1], timeout=timeout, progress=progress)


def resolve_all_weights(names: Iterable[str | os.PathLike], download: bool = False,
                        folders: Iterable[Path] | None = None, **kwargs) -> list[Path]:
    """`resolve_weights` for several names; the files that cannot be had are reported together, one line each."""
    folders = None if folders is None else tuple(folders)
    paths, problems = [], []
    for name in names:
        try:
            paths.append(resolve_weights(name, download=download, folders=folders, **kwargs))
        except (WeightsNotFoundError, WeightsDownloadError) as err:
            problems.append(str(err))
    if problems:
        raise WeightsNotFoundError('\n'.join(problems))
    return paths


class Checkpoint(NamedTuple):
    """What a script's --checkpoint resolves to: the file, and the network and scale its release implies."""

    path: Path
    model: str | None           # the release's network, else the --model given (None: the script's default)
    scale: int | None           # the release's scale, else the --scale_factor given
    release: Release | None     # None for a path


def resolve_checkpoint(name_or_path: str | os.PathLike, model: str | None = None, scale: int | None = None,
                       download: bool = False, folders: Iterable[Path] | None = None, **kwargs) -> Checkpoint:
    """A script's `--checkpoint NAME|PATH [--model M] [--scale_factor S] [--download_weights]`, resolved.

    A release name (or the authors' file name) supplies the network and the scale, since an authors' file does not
    record them; a --model or --scale_factor that contradicts it is a UsageError. A path passes through with the
    given model and scale. Errors as `resolve_weights` (one line each).
    """
    release = None if Path(name_or_path).is_file() else find_release(name_or_path, kwargs.get('releases'))
    if release is None:     # a path (or an unknown name: resolve_weights says so)
        return Checkpoint(resolve_weights(name_or_path, download=download, folders=folders, **kwargs), model, scale,
                          None)
    if model is not None and model != release.model:
        raise UsageError(f'--checkpoint {release.name} holds {release.model} weights, not {model}; drop --model or '
                         f'use --model {release.model}')
    if scale is not None and scale != release.scale:
        raise UsageError(f'--checkpoint {release.name} holds x{release.scale} weights; use --scale_factor '
                         f'{release.scale}')
    path = resolve_weights(name_or_path, download=download, folders=folders, **kwargs)
    return Checkpoint(path, release.model, release.scale, release)


def write_docs(path: Path = DOC) -> bool:
    """Replace the releases table of docs/weights.md with `markdown_table()`; True when the file changed."""
    text = path.read_text()
    start, end = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    updated = text[:start] + '\n' + markdown_table() + text[end:]
    if updated != text:
        path.write_text(updated)
    return updated != text


def documented_table(path: Path = DOC) -> str:
    """The releases table as docs/weights.md has it (between its markers)."""
    text = path.read_text()
    return text[text.index(DOC_BEGIN) + len(DOC_BEGIN):text.index(DOC_END)].lstrip('\n')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('names', nargs='*', help='release names (default: list every release and where it is)')
    parser.add_argument(DOWNLOAD_FLAG, action='store_true', help='download the named releases that are missing')
    parser.add_argument('--timeout', type=positive_float, default=DOWNLOAD_TIMEOUT_S,
                        help='seconds to wait to connect and for each read of a download')
    parser.add_argument('--write_docs', action='store_true', help=f'regenerate the table of {DOC.relative_to(ROOT)}')
    args = parser.parse_args(argv)
    if args.write_docs:
        print(f'{DOC.relative_to(ROOT)}: {"updated" if write_docs() else "already up to date"}')
        return 0
    if args.names:
        for path in resolve_all_weights(args.names, download=args.download_weights, timeout=args.timeout):
            print(path)
        return 0
    folders = default_folders()
    print(f'looking in: {", ".join(map(str, folders))}  (cache: ${CACHE_ENV} or {DEFAULT_CACHE})')
    for release in RELEASES.values():
        try:
            where = str(resolve_weights(release.name, folders=folders))
        except (WeightsNotFoundError, WeightsDigestError) as err:
            where = 'missing: ' + (release.where if isinstance(err, WeightsNotFoundError) else str(err))
        print(f'{release.name:15s} {release.file:28s} {where}')
    return 0


if __name__ == '__main__':
    sys.exit(run_script(main))
