"""The authors' releases (models/releases.py) and the resolver that finds, checks and downloads them (weights.py).

Downloads are tested against HTTP servers on 127.0.0.1 only, each in a thread that a timer stops by itself. The four
files of ../shared/weights (skipped when absent) are resolved through symlinks in a temporary folder, never copied.
"""
from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

import weights
from models import STEREO_MODELS
from models.registry import REGISTRY
from models.releases import RELEASES, UNRELEASED, Release, markdown_table, releases_of
from tests.conftest import SHARED
from models.checkpoint import WEIGHT_KEYS, read_checkpoint
from utils import UsageError
from weights import (WeightsDigestError, WeightsDownloadError, WeightsNotFoundError, documented_table,
                     file_digests, resolve_all_weights, resolve_checkpoint, resolve_weights)

SHARED_WEIGHTS = SHARED / 'weights'
# The four reachable files: ../shared/weights/README.md.
SHARED_RELEASES = ('cvhssr-t_x2', 'cvhssr-t_x4', 'ehfssr-s_x2', 'ehfssr-s_x4')
SERVER_LIFETIME_S = 20      # a test server shuts itself down after this, whatever the test does


# ---- the table

def test_table_lists_every_release_the_issue_names():
    expected = {'ssrdefnet_x4', 'ipassr_x2', 'ipassr_x4', 'scglanet_x4', 'isrrescnet_x4'}
    expected |= {f'nafssr-{v}_x{s}' for v in 'tsbl' for s in (2, 4)}
    expected |= {f'{m}_x{s}' for m in ('cvhssr-t', 'cvhssr-s', 'ehfssr-s', 'ehfssr', 'swinfirssr') for s in (2, 4)}
    assert set(RELEASES) == expected
    assert [r.scale for r in releases_of('ipassr')] == [2, 4]


def test_table_entries_are_well_formed():
    files = [r.file for r in RELEASES.values()]
    assert len(set(files)) == len(files), 'file names must be unique: a folder holds each file once'
    for name, r in RELEASES.items():
        assert name == r.name == f'{r.model}_x{r.scale}'
        assert r.pages and all(p.startswith('https://') for p in r.pages), name
        assert r.weights_key in WEIGHT_KEYS + ('params_ema',), name
        assert r.sha256 is None or re.fullmatch('[0-9a-f]{64}', r.sha256), name
        assert r.git_blob is None or re.fullmatch('[0-9a-f]{40}', r.git_blob), name
        if r.direct_url is not None:
            # a file committed to GitHub, pinned at a commit: its digest is known from the authors' tree
            assert re.fullmatch(r'https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/.+', r.direct_url)
            assert r.direct_url.endswith('/' + r.file) and r.git_blob is not None, name
        else:
            assert any(host in p for p in r.pages for host in ('drive.google.com', 'pan.baidu.com')), name


def test_every_registered_stereo_network_with_a_release_is_in_the_table():
    released = {r.model for r in RELEASES.values()}
    for name in STEREO_MODELS:
        assert name in released or name in UNRELEASED, f'{name}: add its authors\' releases or say why there are none'
    assert not released & set(UNRELEASED)
    for r in RELEASES.values():
        if r.model in REGISTRY:     # networks of other branches join this check once registered
            entry = REGISTRY[r.model]
            assert r.scale in entry.scales and entry.modality == 'stereo', r.name


@pytest.mark.parametrize('name', sorted(RELEASES))
def test_format_agrees_with_the_zoo_loader(name, tmp_path):
    """What the table says a file implies is what the zoo does with it: the loader takes the weights from
    `weights_key` (not from another key of the same file), and the options an authors' file implies set the
    channel order the table records."""
    r = RELEASES[name]
    if r.model not in REGISTRY:
        pytest.skip(f'{r.model} is not registered on this branch')
    wanted, other = {'w': torch.ones(1)}, {'w': torch.zeros(1)}
    # BasicSR files with EMA weights hold both 'params' and 'params_ema'
    checkpoint = {r.weights_key: wanted, **({'params': other} if r.weights_key == 'params_ema' else {})}
    torch.save(checkpoint, tmp_path / r.file)
    state_dict, _ = read_checkpoint(tmp_path / r.file)
    assert torch.equal(state_dict['w'], wanted['w'])
    implied = REGISTRY[r.model].release_options(checkpoint)
    if any(o.name == 'channel_order' for o in REGISTRY[r.model].options):
        assert implied.get('channel_order', 'rgb') == r.channel_order
    else:
        assert r.channel_order == 'rgb', f'{r.model} has no channel_order option for its BGR release'


def test_docs_table_matches_the_data():
    assert documented_table() == markdown_table(), 'run: python weights.py --write_docs'


# ---- finding and checking files

def test_existing_path_is_returned_as_it_is(tmp_path):
    path = tmp_path / 'anything.pth'
    path.write_bytes(b'x')
    assert resolve_weights(path) == path
    assert resolve_weights(str(path)) == path


def test_unknown_name_is_a_file_not_found_with_suggestions(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'checkpoint nafsr-s_x4 not found: .*did you mean nafssr-s_x4'):
        resolve_weights('nafsr-s_x4', folders=[tmp_path])


def test_a_missing_path_is_named_and_an_authors_file_name_points_at_its_release(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'^checkpoint runs/x/last\.pth not found$'):
        resolve_weights('runs/x/last.pth', folders=[tmp_path])
    with pytest.raises(FileNotFoundError, match=r"not found \(it is the authors' ssrdefnet_x4"):
        resolve_weights('checkpoints/SSRDEF_4xSR_epoch80.pth.tar', folders=[tmp_path])


def test_cache_folder_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('SR_WEIGHTS_DIR', str(tmp_path))
    assert weights.cache_dir() == tmp_path
    assert weights.default_folders() == (weights.ROOT / 'checkpoints', tmp_path)
    monkeypatch.delenv('SR_WEIGHTS_DIR')
    assert weights.cache_dir() == Path.home() / '.cache' / 'stereo-sr' / 'weights'


def test_digests_of_a_known_content(tmp_path):
    path = tmp_path / 'f'
    path.write_bytes(b'hello\n')
    # `printf 'hello\n' | git hash-object --stdin` and `sha256sum`
    assert file_digests(path) == ('5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03',
                                  'ce013625030ba8dba906f756967f9e9ca394464a')


def test_a_wrong_file_is_refused_naming_both_digests(tmp_path):
    for name in ('cvhssr-t_x4', 'ipassr_x4'):  # SHA-256 known; only the Git blob id known
        r = RELEASES[name]
        (tmp_path / r.file).write_bytes(b'not the weights')
        sha256, blob = file_digests(tmp_path / r.file)
        with pytest.raises(WeightsDigestError) as err:
            resolve_weights(name, folders=[tmp_path])
        message = str(err.value)
        assert str(tmp_path / r.file) in message
        assert (sha256 in message and r.sha256 in message) if r.sha256 else (blob in message and r.git_blob in message)


def test_offline_message_names_the_url_and_the_folder(tmp_path):
    folders = [tmp_path / 'checkpoints', tmp_path / 'cache']
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights('cvhssr-t_x4', folders=folders)
    message = str(err.value)
    assert '\n' not in message
    assert RELEASES['cvhssr-t_x4'].direct_url in message and f'{folders[-1]}/' in message
    assert '--download_weights' in message


def test_a_release_without_direct_url_refuses_download_with_its_page(tmp_path):
    r = RELEASES['nafssr-s_x4']
    for download in (False, True):
        with pytest.raises(WeightsNotFoundError) as err:
            resolve_weights(r.name, download=download, folders=[tmp_path])
        message = str(err.value)
        assert '\n' not in message and r.pages[0] in message and f'{tmp_path}/' in message
        assert ('cannot fetch' in message) == download
    with pytest.raises(WeightsNotFoundError) as err:    # every folder looked in is named, download or not
        resolve_weights(r.name, download=True, folders=[tmp_path / 'a', tmp_path / 'b'])
    assert f"{tmp_path / 'a'}/ or {tmp_path / 'b'}/" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_several_missing_files_are_reported_together(tmp_path):
    names = ['cvhssr-t_x4', 'nafssr-s_x4', 'ipassr_x2']
    (tmp_path / RELEASES['ipassr_x2'].file).write_bytes(b'')   # wrong digest: reported on its own
    with pytest.raises(WeightsDigestError):
        resolve_all_weights(names, folders=[tmp_path])
    (tmp_path / RELEASES['ipassr_x2'].file).unlink()
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_all_weights(names, folders=[tmp_path])
    lines = str(err.value).splitlines()
    assert len(lines) == 3 and all(RELEASES[n].file in line for n, line in zip(names, lines))


def test_a_release_name_implies_network_and_scale_for_the_scripts(tmp_path):
    payload = b'toy weights'
    table = toy_release('http://127.0.0.1:9/toy.pth', payload)
    (tmp_path / 'toy.pth').write_bytes(payload)
    resolved = resolve_checkpoint('toy_x4', folders=[tmp_path], releases=table)
    assert (resolved.path, resolved.model, resolved.scale) == (tmp_path / 'toy.pth', 'toy', 4)
    assert resolve_checkpoint('toy_x4', 'toy', 4, folders=[tmp_path], releases=table).release is table['toy_x4']
    with pytest.raises(UsageError, match='holds toy weights, not nafssr-s'):
        resolve_checkpoint('toy_x4', 'nafssr-s', folders=[tmp_path], releases=table)
    with pytest.raises(UsageError, match='use --scale_factor 4'):
        resolve_checkpoint('toy_x4', None, 2, folders=[tmp_path], releases=table)
    with pytest.raises(UsageError):     # before looking for the file: the command line is wrong either way
        resolve_checkpoint('toy_x4', 'other', folders=[tmp_path / 'empty'], releases=table)
    path = resolve_checkpoint(tmp_path / 'toy.pth', 'nafssr-s', 2, releases=table)     # a path implies nothing
    assert path == (tmp_path / 'toy.pth', 'nafssr-s', 2, None)


# ---- downloads from servers on 127.0.0.1

def serve(routes: dict[str, tuple[int, bytes, dict]]):
    """An HTTP server on 127.0.0.1 in a thread: path -> (status, body, extra headers). Returns (base URL, stop)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, body, headers = routes.get(self.path, (404, b'', {}))
            self.send_response(status)
            headers = {'Content-Length': str(len(body)), **headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    timer = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    timer.daemon = True
    timer.start()

    def stop():
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return f'http://127.0.0.1:{server.server_address[1]}', stop


def toy_release(url: str, payload: bytes, **fields) -> dict[str, Release]:
    digests = {'sha256': hashlib.sha256(payload).hexdigest(), **fields}
    r = Release(name='toy_x4', model='toy', scale=4, file='toy.pth', pages=(url,), source='test', direct_url=url,
                weights_key='params', channel_order='rgb', format='test', **digests)
    return {r.name: r}


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for key in ('no_proxy', 'NO_PROXY'):
        monkeypatch.setenv(key, '127.0.0.1,localhost')


def test_download_writes_the_checked_file_and_only_it(tmp_path):
    payload = bytes(range(256)) * 5000      # 1.28 MB: more than one read block
    base, stop = serve({'/toy.pth': (200, payload, {})})
    try:
        table = toy_release(base + '/toy.pth', payload, git_blob=file_digests_of(payload)[1])
        folders = [tmp_path / 'checkpoints', tmp_path / 'cache']
        with pytest.raises(WeightsNotFoundError, match='--download_weights'):
            resolve_weights('toy_x4', folders=folders, releases=table)
        path = resolve_weights('toy_x4', download=True, folders=folders, releases=table, progress=False)
    finally:
        stop()
    assert path == folders[-1] / 'toy.pth' and path.read_bytes() == payload
    assert [p.name for p in folders[-1].iterdir()] == ['toy.pth']          # no temporary file left
    assert resolve_weights('toy.pth', folders=folders, releases=table) == path      # found now, server gone


def file_digests_of(payload: bytes) -> tuple[str, str]:
    return (hashlib.sha256(payload).hexdigest(),
            hashlib.sha1(b'blob %d\0' % len(payload) + payload).hexdigest())


@pytest.mark.parametrize('case', ['wrong content', 'truncated', 'not found'])
def test_a_bad_download_keeps_nothing(tmp_path, case):
    payload = b'the right weights'
    routes = {'wrong content': {'/toy.pth': (200, b'other bytes', {})},
              'truncated': {'/toy.pth': (200, payload[:5], {'Content-Length': str(len(payload))})},
              'not found': {}}[case]
    base, stop = serve(routes)
    url = base + '/toy.pth'
    try:
        error = WeightsDigestError if case == 'wrong content' else WeightsDownloadError
        with pytest.raises(error) as err:
            resolve_weights('toy_x4', download=True, folders=[tmp_path], releases=toy_release(url, payload),
                            progress=False, timeout=5)
    finally:
        stop()
    assert url in str(err.value) and '\n' not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_a_silent_server_times_out(tmp_path):
    """A server that accepts the connection and never answers: the download fails after the timeout."""
    with socket.socket() as silent:
        silent.bind(('127.0.0.1', 0))
        silent.listen(1)    # the kernel completes the handshake; nobody ever reads or replies
        url = f'http://127.0.0.1:{silent.getsockname()[1]}/toy.pth'
        start = time.monotonic()
        with pytest.raises(WeightsDownloadError) as err:
            resolve_weights('toy_x4', download=True, folders=[tmp_path], releases=toy_release(url, b'x'),
                            progress=False, timeout=0.5)
        elapsed = time.monotonic() - start
    assert elapsed < 5, f'took {elapsed:.1f} s with a 0.5 s timeout'
    assert url in str(err.value) and f'{tmp_path}/' in str(err.value) and 'timed out' in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_no_server_is_one_line_naming_url_and_folder(tmp_path):
    with socket.socket() as closed:
        closed.bind(('127.0.0.1', 0))
        port = closed.getsockname()[1]
    url = f'http://127.0.0.1:{port}/toy.pth'
    with pytest.raises(WeightsDownloadError) as err:
        resolve_weights('toy_x4', download=True, folders=[tmp_path], releases=toy_release(url, b'x'), timeout=2)
    message = str(err.value)
    assert '\n' not in message and url in message and f'{tmp_path}/' in message


# ---- the authors' files of ../shared/weights

@pytest.fixture(scope='module')
def shared_weights() -> Path:
    if not (SHARED_WEIGHTS / 'SHA256SUMS').is_file():
        pytest.skip(f'the authors\' weights are not at {SHARED_WEIGHTS}')
    return SHARED_WEIGHTS


def test_shared_files_have_the_recorded_digests(shared_weights):
    sums = dict(reversed(line.split()) for line in (shared_weights / 'SHA256SUMS').read_text().splitlines())
    for name in SHARED_RELEASES:
        r = RELEASES[name]
        assert sums[r.file] == r.sha256
        assert file_digests(shared_weights / r.file) == (r.sha256, r.git_blob)
        assert (shared_weights / r.file).stat().st_size == r.size


def test_shared_files_resolve_by_name_through_symlinks(shared_weights, tmp_path, monkeypatch, capsys):
    for name in SHARED_RELEASES:
        (tmp_path / RELEASES[name].file).symlink_to(shared_weights / RELEASES[name].file)
    paths = resolve_all_weights(SHARED_RELEASES, folders=[tmp_path / 'empty', tmp_path])
    assert paths == [tmp_path / RELEASES[n].file for n in SHARED_RELEASES]
    assert resolve_weights('EHFSSR_S_x4.pth', folders=[tmp_path]) == tmp_path / 'EHFSSR_S_x4.pth'
    monkeypatch.setenv('SR_WEIGHTS_DIR', str(tmp_path))     # the CLI, with the cache folder from the environment
    assert weights.main(['cvhssr-t_x2']) == 0
    assert capsys.readouterr().out.strip().endswith(str(tmp_path / 'CVHSSR_Tx2.pth'))


@pytest.mark.parametrize('name', SHARED_RELEASES)
def test_shared_files_load_strictly_by_name(shared_weights, tmp_path, name):
    r = RELEASES[name]
    if r.model not in REGISTRY:
        pytest.skip(f'{r.model} is not registered on this branch')
    from models.checkpoint import load_model
    (tmp_path / r.file).symlink_to(shared_weights / r.file)
    model, checkpoint = load_model(resolve_weights(name, folders=[tmp_path]), r.scale, name=r.model)
    assert r.weights_key in checkpoint and model.zoo_name == r.model
