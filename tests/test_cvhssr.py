"""CVHSSR (models/cvhssr.py): state-dict layout, parameter counts, the blocks against plain forms, the loss, one
training step, and the authors' released CVHSSR-T files (strict load; Motorcycle gain over bicubic). CPU; the
official code is not needed (tests/test_cvhssr_parity.py compares with it)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import build_model, model_entry
from models.cvhssr import VARIANTS, CVHSSR, CVHSSRConfig, CVHSSRLoss, release_options
from utils import load_model

# Parameter counts measured on the official code (zoo2.md §0): (variant, scale) -> count.
OFFICIAL_PARAMS = {('t', 2): 662_412, ('t', 4): 678_000, ('s', 2): 2_216_460, ('s', 4): 2_237_232}
WEIGHTS_DIR = Path(__file__).resolve().parents[1].parent / 'shared' / 'weights'

pytestmark = pytest.mark.usefixtures('one_thread')


def released_weights(scale: int) -> Path:
    """The authors' CVHSSR-T file for `scale` in ../shared/weights (skip when absent: never part of the project)."""
    path = WEIGHTS_DIR / f'CVHSSR_Tx{scale}.pth'
    if not path.is_file():
        pytest.skip(f"the authors' weights are not at {path}")
    return path


# ---- layout: names, order, shapes, counts


@pytest.mark.parametrize('variant', ['t', 's'])
@pytest.mark.parametrize('scale', [2, 4])
def test_state_dict_layout_and_parameter_count(variant, scale, reference_dir):
    model = CVHSSR(CVHSSRConfig.variant(variant, scale))
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert layout == json.loads((reference_dir / f'cvhssr_{variant}_x{scale}_state_dict.json').read_text())
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[variant, scale]
    assert len(layout) == 4 + 52 * VARIANTS[variant]['num_blocks']


def test_registry_entries():
    for variant in ('t', 's'):
        entry = model_entry(f'cvhssr-{variant}')
        assert entry.scales == (2, 4) and entry.criterion is CVHSSRLoss
        recipe = entry.recipe
        assert (recipe.lr, recipe.betas, recipe.eta_min, recipe.total_iters) == (1e-4, (0.9, 0.9), 1e-8, 200_000)
        assert recipe.batch_size == 24 and recipe.grad_clip == 0.01 and recipe.channel_shuffle
        assert recipe.optimizer == 'adamw' and 'Lion' in recipe.source
        assert {o.name for o in entry.options} == {'tlc', 'drop_path', 'channel_order'}
    model = build_model('cvhssr-s', 2)
    assert (model.scale, model.config.width, model.config.num_blocks, model.config.drop_path) == (2, 64, 32, 0.1)
    assert model.config.tlc_window == (45, 135)
    assert build_model('cvhssr-t', 4, tlc=False).body[0].module.blk.sca2[0].tlc is False
    assert release_options({'params': {}}) == {'channel_order': 'bgr'} and release_options({'model': {}}) == {}


# ---- the authors' released weights


@pytest.mark.parametrize('scale', [2, 4])
def test_authors_weights_load_strictly_as_bgr(scale):
    model, checkpoint = load_model(released_weights(scale), scale, name='cvhssr-t')
    assert 'params' in checkpoint and model.config.channel_order == 'bgr' and model.config.tlc
    assert not model.training and model.zoo_name == 'cvhssr-t'
    # Trained residual scales are far from their zero init: the body is not the identity.
    assert model.body[0].module.blk.beta.abs().max() > 0.01
