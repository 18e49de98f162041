"""Whole or nothing, for the preparation scripts (data/prepare_*.py): output folders are written into a temporary
sibling and renamed into place at the end, so a preparation that fails halfway (an error, Ctrl-C, SIGTERM, a full
disk) leaves the previous output as it was and no temporary folder behind.

    with staged_output(root, ['patches_x4']) as staging:
        write(staging / 'patches_x4' / ...)          # becomes root/patches_x4, replacing the old one whole

Only a process killed outright (SIGKILL, power loss) can leave a `.partial-<pid>-*` folder; the next preparation into
the same root removes those whose process is gone.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

log = logging.getLogger('prepare')
PARTIAL_PREFIX = '.partial-'


def holds_output(path: Path) -> bool:
    """Whether `path` is a file or a folder with anything in it."""
    return path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))


def _remove_stale_partials(root: Path) -> None:
    """Delete root/.partial-<pid>-* folders of processes that no longer run (left by a SIGKILL)."""
    for folder in root.glob(f'{PARTIAL_PREFIX}*'):
        try:
            pid = int(folder.name[len(PARTIAL_PREFIX):].split('-')[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            log.info(f'removing {folder}, left by a preparation that was killed')
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError):       # not ours, or a live process of another user
            continue


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextmanager
def staged_output(root: Path, names: Sequence[str]) -> Iterator[Path]:
    """Yield a new empty folder `root/.partial-<pid>-<random>`. On success each `<staging>/<name>` that was written
    replaces `root/<name>` whole (the old one is removed); on any failure the staging folder is deleted and `root` is
    left exactly as it was (folders this call created are removed again). SIGTERM is turned into KeyboardInterrupt
    meanwhile, so a scheduler's stop cleans up like Ctrl-C."""
    root = Path(root)
    created = [folder for folder in (root, *root.parents) if not folder.exists()]    # innermost first
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    staging = Path(tempfile.mkdtemp(prefix=f'{PARTIAL_PREFIX}{os.getpid()}-', dir=root))
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield staging
        _commit(root, staging, names)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(err.errno, f'{err.strerror} while writing into {root}: nothing there was changed, and the '
                                 f'partial output is deleted') from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:
            if any(folder.iterdir()):
                break
            folder.rmdir()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _commit(root: Path, staging: Path, names: Sequence[str]) -> None:
    """Move every staged name into `root`, the old ones aside into `staging` (deleted with it); undone on failure."""
    placed, aside = [], []
    try:
        for name in names:
            new, target = staging / name, root / name
            if not new.exists():
                continue
            if target.exists() or target.is_symlink():
                os.rename(target, staging / f'{name}.previous')
                aside.append(name)
            os.rename(new, target)
            placed.append(name)
    except BaseException:
        for name in placed:
            os.rename(root / name, staging / name)
        for name in aside:
            os.rename(staging / f'{name}.previous', root / name)
        raise
