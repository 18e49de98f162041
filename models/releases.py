"""The authors' released weights that the zoo can load: one `Release` per file, looked up by a release name such as
`nafssr-s_x4` (`<zoo network>_x<scale>`), as timm and torchvision look pretrained weights up by name.

This module is data only: it imports nothing from the project, so scripts, tests and `weights.py` (which finds,
checks and downloads the files) can all read it. The weights themselves are the authors' files: the project loads them
by name and points at the authors' pages; it never commits or redistributes them (most carry no licence).

Sources (read 2026-12-07 from mirrors of the authors' repositories; commits pinned in `Release.source`):
* where each file is published: the official READMEs (megvii-research/NAFNet `docs/StereoSR.md` lines 67-78,
  Zdafeng/SwinFIR `README.md` line 72, fzuzyb/SCGLANet `README.md` line 25, MIVRC/SSRDEFNet-PyTorch `README.md`
  line 12) and, for files committed to a repository, the repository tree itself (`git ls-tree`);
* each file's name: the path that the authors' test code or test config loads (`pretrain_network_g` of their test
  ymls, iPASSR's `test.py`, ISRResCNet's `test_isrrescnet.py`);
* `git_blob`: the Git object id (SHA-1 of 'blob <size>\\0' + content) recorded in the authors' tree at the pinned
  commit, which identifies the file exactly even where the mirror lacks its content;
* `sha256`: computed from the four files whose content is reachable here (`../shared/weights/SHA256SUMS`; they equal
  the mirror blobs of AlexZou14/CVHSSR and jianwensong/EHFSSR byte for byte). None where it could not be computed;
* the format and what it implies: the authors' loaders and data pipelines (`../shared/reference/*.md`, zoo2.md for
  CVHSSR/EHFSSR/SCGLANet/SwinFIRSSR).

`direct_url` is set only where a plain HTTP GET returns the file (a file committed to a GitHub repository, served by
raw.githubusercontent.com at the pinned commit). Google Drive and Baidu Netdisk links are pages a person opens, so those
releases list `pages` only and must be downloaded by hand.
"""
from __future__ import annotations

from dataclasses import dataclass

# Key of a BasicSR checkpoint ({'params': state_dict}) and of its EMA weights ({'params_ema': ...}, SwinFIR's models).
BASICSR_KEY = 'params'
BASICSR_EMA_KEY = 'params_ema'
CHANNEL_ORDERS = ('rgb', 'bgr')


@dataclass(frozen=True)
class Release:
    """One file of trained weights published by a network's authors."""

    name: str                       # release name, '<zoo network>_x<scale>', e.g. 'nafssr-s_x4'
    model: str                      # zoo network name (models.build_model)
    scale: int                      # SR scale factor
    file: str                       # the file name as the authors ship it
    pages: tuple[str, ...]          # where the authors publish it (repository page, Drive/Baidu page with its code)
    source: str                     # the document (repository, path, commit) that names the file and its pages
    weights_key: str                # where the checkpoint dict keeps the weights to load
    channel_order: str              # colour order of the views the weights were trained on ('rgb' | 'bgr')
    format: str                     # what the file holds and what that implies for loading and evaluation
    direct_url: str | None = None   # a URL that a plain GET downloads; None: download by hand from `pages`
    sha256: str | None = None       # SHA-256 of the file, where it could be computed
    git_blob: str | None = None     # Git blob id (SHA-1) of the file in the authors' repository at the pinned commit
    size: int | None = None         # bytes, where known

    def __post_init__(self):
        if self.name != f'{self.model}_x{self.scale}':
            raise ValueError(f'release {self.name!r}: names are <model>_x<scale> ({self.model}_x{self.scale})')
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f'release {self.name}: channel_order must be one of {CHANNEL_ORDERS}')

    @property
    def where(self) -> str:
        """The address a user downloads from: the direct URL, else the authors' first page."""
        return self.direct_url or self.pages[0]


def github_blob(repository: str, commit: str, path: str) -> tuple[str, str]:
    """(page, direct URL) of a file committed to a GitHub repository, pinned at `commit`."""
    return (f'https://github.com/{repository}/blob/{commit}/{path}',
            f'https://raw.githubusercontent.com/{repository}/{commit}/{path}')


# ---- commits of the authors' repositories whose trees list the files (mirrors read 2026-12-07)
SSRDEFNET_COMMIT = '4d95c175fc60526fecbb42172a211fbd4472adf6'    # MIVRC/SSRDEFNet-PyTorch, 2022-03-13
IPASSR_COMMIT = 'e1ffe066f6c21b0ed402e64ed7b8c2f70c477a6f'       # YingqianWang/iPASSR, 2021-12-28
NAFNET_COMMIT = '2b4af71ebe098a92a75910c233a3965a3e93ede4'       # megvii-research/NAFNet, 2024-03-29
CVHSSR_COMMIT = '252cd388265ab90cc29cc6c39727514d9f98be93'       # AlexZou14/CVHSSR, 2024-04-05
EHFSSR_COMMIT = '66d96aa41c77cb1571d33ca6d3110aafa7fb6bc3'       # jianwensong/EHFSSR, 2024-12-23
SCGLANET_COMMIT = '3ad03227ef18f7f6253f01a3e7e88fd96f51a9f6'     # fzuzyb/SCGLANet, 2023-06-07
SWINFIR_COMMIT = 'd08db6414a84a442d53fa6ad49b14f27969da80f'      # Zdafeng/SwinFIR, 2024-05-20
ISRRESCNET_COMMIT = '8175bb9efa5bba2cce4ad86616219209c20b7244'   # RaoUmer/ISRResCNet, 2021-05-22

BASICSR_BGR = ("BasicSR {'params': state_dict}; trained and tested on BGR views (OpenCV loading, the NAFNet data "
               "path), so the format implies channel order BGR")


def _committed(repository: str, commit: str, path: str, **fields) -> dict:
    """Fields of a release committed to a GitHub repository: its page and direct URL, the tree as the source."""
    page, url = github_blob(repository, commit, path)
    return dict(pages=(page,), direct_url=url, source=f'{repository} tree @ {commit[:7]}: {path}', **fields)


def _ssrdefnet() -> list[Release]:
    # The README (line 12) calls it SSRDEF_x4SR_epoch80.pth.tar; the committed file and the test scripts use this name.
    # No x2 weights were released (ssrdefnet.md, the official x2 training crashes).
    return [Release(
        name='ssrdefnet_x4', model='ssrdefnet', scale=4, file='SSRDEF_4xSR_epoch80.pth.tar',
        weights_key='state_dict', channel_order='rgb',
        format="{'epoch', 'state_dict'} with DataParallel 'module.' prefixes (stripped on load); RGB in [0, 1]",
        git_blob='dd86282cbe3e7b202e4a117b0c7b976462bcc557',
        **_committed('MIVRC/SSRDEFNet-PyTorch', SSRDEFNET_COMMIT, 'checkpoints/SSRDEF_4xSR_epoch80.pth.tar'))]


def _ipassr() -> list[Release]:
    blobs = {2: 'c1cc0b0add952b3f614922b4a208223678f2d848', 4: 'f25dc7567e5016beaf86cbc0bbac04c747e9d8c6'}
    return [Release(
        name=f'ipassr_x{s}', model='ipassr', scale=s, file=f'iPASSR_{s}xSR.pth.tar',
        weights_key='state_dict', channel_order='rgb',
        format="{'epoch', 'state_dict'}; RGB in [0, 1]; the authors' test.py never calls eval(), so their numbers need "
               "batch-statistics BatchNorm in the PAM (bn_batch_stats, implied by this format)",
        git_blob=blobs[s],
        **_committed('YingqianWang/iPASSR', IPASSR_COMMIT, f'log/iPASSR_{s}xSR.pth.tar')) for s in (2, 4)]


# NAFSSR: docs/StereoSR.md lines 71-78, one Google Drive file and one Baidu page (with its extraction code) per file.
NAFSSR_PAGES = {
    ('t', 4): ('https://drive.google.com/file/d/1owfYG1KTXFMl4wHpUZefWAcVlBpLohe5/view?usp=sharing',
               'https://pan.baidu.com/s/1yC5XzJcL5peC1YuW3MkFMA?pwd=5j1u'),
    ('s', 4): ('https://drive.google.com/file/d/1RpfS2lemsgetIQwBwkZpZwLBJfOTDCU5/view?usp=sharing',
               'https://pan.baidu.com/s/1XvwM5KVhNsKAxWbxU85SFA?pwd=n5au'),
    ('b', 4): ('https://drive.google.com/file/d/1Su0OTp66_NsXUbqTAIi1msvsp0G5WVxp/view?usp=sharing',
               'https://pan.baidu.com/s/18tVlH-QIVtvDC1LM2oPatw?pwd=3up5'),
    ('l', 4): ('https://drive.google.com/file/d/1TIdQhPtBrZb2wrBdAp9l8NHINLeExOwb/view?usp=sharing',
               'https://pan.baidu.com/s/1P8ioEuI1gwydA2Avr3nUvw?pwd=qs7a'),
    ('t', 2): ('https://drive.google.com/file/d/1sBivtt5KaFMjMhBwyajYy1uemIEFQBvW/view?usp=sharing',
               'https://pan.baidu.com/s/1RDW923v0e0G_eYvTF8I7Dg?pwd=utgs'),
    ('s', 2): ('https://drive.google.com/file/d/1caVrp3fFSpwiU8RPGXe-zDD1tU110yxA/view?usp=sharing',
               'https://pan.baidu.com/s/1qJmQzv-YV1V9raim57pTIQ?pwd=t2or'),
    ('b', 2): ('https://drive.google.com/file/d/1gOfDTfyCaff_xNm86u8sN_3MtAZvnQEk/view?usp=sharing',
               'https://pan.baidu.com/s/1IkadqW1uWx9xM5K2ETJ9-A?pwd=pv1f'),
    ('l', 2): ('https://drive.google.com/file/d/1SZ6bQVYTVS_AXedBEr-_mBCC-qGYHLmf/view?usp=sharing',
               'https://pan.baidu.com/s/1GS6YQSSECH8hAKhvzw6GyQ?pwd=2v3v'),
}


def _nafssr() -> list[Release]:
    return [Release(
        name=f'nafssr-{v}_x{s}', model=f'nafssr-{v}', scale=s, file=f'NAFSSR-{v.upper()}_{s}x.pth',
        pages=NAFSSR_PAGES[v, s],
        source=f'megvii-research/NAFNet @ {NAFNET_COMMIT[:7]}: docs/StereoSR.md (table), '
               f'options/test/NAFSSR/NAFSSR-{v.upper()}_{s}x.yml (file name)',
        weights_key=BASICSR_KEY, channel_order='bgr', format=BASICSR_BGR)
        for s in (4, 2) for v in 'tsbl']


def _cvhssr() -> list[Release]:
    # The four files are committed under ckpt/ (README line 92 and the test ymls load CVHSSR_{T,S}x{2,4}.pth).
    known = {  # content reachable here: ../shared/weights (SHA256SUMS), equal to the mirror blobs
        ('t', 2): ('29b5b8643274730102baaf1fe83711bd2d3c67a1c2aaa0bfe06c03da33e764c3', 2939321),
        ('t', 4): ('ae8a06b4c2a9fe5fa295fed210adcdffa9535891f68abfc5442bbcf3e0e5daac', 3001721),
    }
    blobs = {('t', 2): '2017246d2f8b4bf8d88ed5a1b74ca802d97be165', ('t', 4): '0e3cfdd56b2603d0d47768e46bc882dc8ee310dd',
             ('s', 2): 'f313e6014ad013785689a952fdb563917f45b299', ('s', 4): 'f4f3b8378b89583319378d787ba9cd5d3bcbfd09'}
    releases = []
    for v in 'ts':
        for s in (2, 4):
            sha256, size = known.get((v, s), (None, None))
            path = f'ckpt/CVHSSR_{v.upper()}x{s}.pth'
            releases.append(Release(
                name=f'cvhssr-{v}_x{s}', model=f'cvhssr-{v}', scale=s, file=f'CVHSSR_{v.upper()}x{s}.pth',
                weights_key=BASICSR_KEY, channel_order='bgr', format=BASICSR_BGR, sha256=sha256,
                git_blob=blobs[v, s], size=size, **_committed('AlexZou14/CVHSSR', CVHSSR_COMMIT, path)))
    return releases


def _ehfssr() -> list[Release]:
    # Committed under experiments/pretrained_models/ (the test ymls' pretrain_network_g); the README links none.
    known = {
        ('ehfssr-s', 2): ('4be9b0377d77437f3dadcf3b0a55e66dbcc0b84525f221af452405ffae766a12', 2820991),
        ('ehfssr-s', 4): ('ed43b200c58f93945abb4cc65954e16dbf63f0a3d5c5d6293b53e6e135be7d0b', 2883391),
    }
    files = {('ehfssr-s', 2): ('EHFSSR_S_x2.pth', '96cd8e2890b8a0a0fc349619b4fb97d186459415'),
             ('ehfssr-s', 4): ('EHFSSR_S_x4.pth', 'abeeb11bb64ebbb9c140cfe2bea8376f9296cc49'),
             ('ehfssr', 2): ('EHFSSR_x2.pth', 'af099822b5f5b5b8df51af567a5eeabf6f4f1cf4'),
             ('ehfssr', 4): ('EHFSSR_x4.pth', '9002ac49a3008c336b94ecb8e29e287cc3a23077')}
    releases = []
    for (model, s), (file, blob) in files.items():
        sha256, size = known.get((model, s), (None, None))
        releases.append(Release(
            name=f'{model}_x{s}', model=model, scale=s, file=file, weights_key=BASICSR_KEY, channel_order='bgr',
            format=BASICSR_BGR + " (stage 1 of the authors' training read RGB patches; stage 2 and the test, BGR)",
            sha256=sha256, git_blob=blob, size=size,
            **_committed('jianwensong/EHFSSR', EHFSSR_COMMIT, f'experiments/pretrained_models/{file}')))
    return releases


def _scglanet() -> list[Release]:
    # NTIRE 2023 Track 1 (bicubic, fidelity) is the model of the paper's table; the same Baidu share holds the
    # Track 2 (GAN) and Track 3 (realistic degradations) files, which the zoo does not list.
    return [Release(
        name='scglanet_x4', model='scglanet', scale=4, file='scglanet_x4_Track1.pth',
        pages=('https://pan.baidu.com/s/1ELaFEP2dzOR6q9suxjDLWg?pwd=rrhy',),
        source=f'fzuzyb/SCGLANet @ {SCGLANET_COMMIT[:7]}: README.md line 25 (Baidu only), '
               'options/test/StereoSR/test_SCGLANet-L_4x_Track1.yml (file name)',
        weights_key=BASICSR_KEY, channel_order='rgb',
        format="BasicSR checkpoint loaded with the default param_key 'params' (file not inspected: Baidu only); "
               "RGB views (each view converted by img2tensor)")]


def _swinfirssr() -> list[Release]:
    pages = ('https://drive.google.com/drive/folders/1wiJcFJA4DxIISB7b_qz4u-kA1WE6EJOk?usp=sharing',
             'https://pan.baidu.com/s/1zBVNAqXLMld44G5t0rBG2Q?pwd=8i4g')
    return [Release(
        name=f'swinfirssr_x{s}', model='swinfirssr', scale=s, file=f'SwinFIRSSR_SSRx{s}.pth', pages=pages,
        source=f'Zdafeng/SwinFIR @ {SWINFIR_COMMIT[:7]}: README.md line 72 (a Drive folder and a Baidu share, '
               f'code 8i4g), options/test/SwinFIRSSR/SwinFIRSSR_SSRx{s}.yml (file name, param_key_g)',
        weights_key=BASICSR_EMA_KEY, channel_order='rgb',
        format="BasicSR checkpoint; the authors' test loads its EMA weights 'params_ema' (param_key_g), not "
               "'params'; RGB views, an RGB mean subtracted inside the network") for s in (2, 4)]


def _isrrescnet() -> list[Release]:
    # A single-image network; the zoo applies it to each view. Only x4 was released.
    return [Release(
        name='isrrescnet_x4', model='isrrescnet', scale=4, file='isrrescnet_x4.pth',
        weights_key='model_state_dict', channel_order='rgb',
        format="{'model_state_dict': ...} (other keys unknown: the mirror lacks the content); RGB in [0, 255] "
               "(test_isrrescnet.py reverses OpenCV's BGR)",
        git_blob='74d93da099f0d934f1a39a48709edd87af4322e8',
        **_committed('RaoUmer/ISRResCNet', ISRRESCNET_COMMIT, 'isrrescnet_code_demo/trained_nets/isrrescnet_x4.pth'))]


RELEASES: dict[str, Release] = {r.name: r for r in (
    _ssrdefnet() + _ipassr() + _nafssr() + _cvhssr() + _ehfssr() + _scglanet() + _swinfirssr() + _isrrescnet())}

# Stereo networks of the zoo whose authors published no weights (so `RELEASES` has no entry for them).
UNRELEASED: dict[str, str] = {
    'srnet': 'no trained weights in the authors\' repository, only training logs (shared/reference/srnet_zoom.md)',
}


def release(name: str) -> Release:
    """The release called `name`; a KeyError listing the names otherwise."""
    if name not in RELEASES:
        raise KeyError(f"unknown release {name!r}; known: {', '.join(RELEASES)}")
    return RELEASES[name]


def releases_of(model: str) -> list[Release]:
    """The releases of zoo network `model`, by scale."""
    return sorted((r for r in RELEASES.values() if r.model == model), key=lambda r: r.scale)


def markdown_table(releases: dict[str, Release] | None = None) -> str:
    """The users' table of docs/weights.md: one row per release (tests/test_releases.py checks the doc against it)."""
    releases = RELEASES if releases is None else releases
    rows = ['| release | file, as shipped | where (GitHub: direct; Drive, Baidu: by hand) | digest | loads |',
            '|---|---|---|---|---|']
    links = []      # reference-style links below the table keep its rows short
    for r in releases.values():
        if r.direct_url:
            where, links = f'[GitHub][{r.name}]', links + [f'[{r.name}]: {r.direct_url}']
        else:
            kinds = ['Drive' if 'drive.google' in p else 'Baidu' if 'baidu' in p else 'page' for p in r.pages]
            labels = [r.name] + [f'{r.name} {i}' for i in range(2, len(r.pages) + 1)]
            where = ' '.join(f'[{kind}][{label}]' for kind, label in zip(kinds, labels))
            links += [f'[{label}]: {p}' for label, p in zip(labels, r.pages)]
        digest = f'`{r.sha256[:12]}…`' if r.sha256 else f'blob `{r.git_blob[:10]}…`' if r.git_blob else '–'
        rows.append(f'| `{r.name}` | `{r.file}` | {where} | {digest} | '
                    f"`{r.weights_key}`, {r.channel_order.upper()} |")
    rows += [''] + links
    sums = [f'{r.sha256}  {r.file}' for r in releases.values() if r.sha256]
    blobs = [f'{r.git_blob}  {r.file}' for r in releases.values() if r.git_blob]
    return ('\n'.join(rows) + '\n\nSHA-256 (`sha256sum -c` format):\n\n```\n' + '\n'.join(sums) + '\n```\n\n'
            'Git blob ids (what `git hash-object FILE` prints):\n\n```\n' + '\n'.join(blobs) + '\n```\n')


__all__ = ['RELEASES', 'Release', 'UNRELEASED', 'markdown_table', 'release', 'releases_of']
