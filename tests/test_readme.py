"""The README stays a manual that tells the truth about the tree: its map of the code names every top-level module
and script, every package and every network file, its links and those of docs/ and reports/ resolve, and it stays
short. Reads files only; runs in milliseconds."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
MAX_README_LINES = 320                  # the manual reads like nanoGPT's (~300 lines); docs/ and reports/ hold the rest
MAP_HEADING = '## The code'
# [text](target) and ![alt](target); the target ends at the first space or ')' (titles are not used here)
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def code_map() -> str:
    """The first fenced block after the map's heading."""
    text = README.read_text(encoding='utf-8')
    assert MAP_HEADING in text, f'README.md has no "{MAP_HEADING}" section'
    section = text.split(MAP_HEADING, 1)[1]
    match = re.search(r'```[^\n]*\n(.*?)```', section, re.S)
    assert match, f'the "{MAP_HEADING}" section of README.md has no code block'
    return match.group(1)


def named(name: str, text: str) -> bool:
    """`name` appears as a whole path: not as the tail of a longer name (train.py in prepare_train.py) nor as a
    component of another path (data/ in models/data/)."""
    return re.search(r'(?<![\w./-])' + re.escape(name) + r'(?![\w.-])', text) is not None


def is_package(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(('.', '_')) and any(path.glob('*.py'))


def required_names() -> list[tuple[str, str]]:
    """(name as the map must write it, the line of the map it may appear in) for every top-level module/script,
    every top-level package and every module or package in models/. Names under models/ may be written relative
    to the models/ entry (indented below it), so both forms are accepted."""
    names = [(f'{path.name}', '') for path in sorted(ROOT.glob('*.py'))]
    names += [(f'{path.name}/', '') for path in sorted(ROOT.iterdir()) if is_package(path)]
    models = ROOT / 'models'
    names += [(path.name, 'models/') for path in sorted(models.glob('*.py'))]
    names += [(f'{path.name}/', 'models/') for path in sorted(models.iterdir()) if is_package(path)]
    return names


def models_block(text: str) -> str:
    """The map's `models/` line and the indented lines below it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith('models/')), None)
    if start is None:
        return ''
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in (' ', '')), len(lines))
    return '\n'.join(lines[start:end])


@pytest.mark.parametrize('name,parent', required_names(), ids=lambda v: v or 'root')
def test_code_map_names_every_module(name, parent):
    text = code_map()
    if parent:
        # under models/: `models/x.py` anywhere, or `x.py` in the indented block below the `models/` line
        assert named(parent + name, text) or named(name, models_block(text)), \
            f'the map of the code in README.md does not name {parent}{name}'
    else:
        assert named(name, text), f'the map of the code in README.md does not name {name}'


def test_named_helper():
    assert named('train.py', 'train.py  test_sr.py')
    assert not named('train.py', 'data/prepare_train.py')
    assert not named('data/', 'models/data/')
    assert named('data/', 'data/   readers.py')


def markdown_files() -> list[Path]:
    return [README] + sorted((ROOT / 'docs').rglob('*.md')) + sorted((ROOT / 'reports').rglob('*.md'))


@pytest.mark.parametrize('path', markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = path.read_text(encoding='utf-8')
    broken = []
    for target in LINK.findall(text):
        if re.match(r'[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
            continue                    # a URL (https:, mailto:) or an anchor in the same file
        file = target.split('#', 1)[0]
        if not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f'{path.relative_to(ROOT)} links to files that do not exist: {broken}'


def test_readme_is_short():
    lines = README.read_text(encoding='utf-8').count('\n')
    assert lines <= MAX_README_LINES, f'README.md has {lines} lines (at most {MAX_README_LINES}): move notes to docs/'


def test_readme_keeps_the_two_commands():
    text = README.read_text(encoding='utf-8')
    for command in ('pip install -r requirements.txt && python demo.py',
                    'pip install -r requirements.txt && python -m pytest -q'):
        assert command in text
