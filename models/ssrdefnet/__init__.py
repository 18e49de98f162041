"""SSRDE-FNet (Dai et al., ACM MM 2021): stereo SR and HR disparity with HR disparity feedback.

One file per concept of the paper: `features.py` (matching features), `parallax_attention.py` (LR PAM),
`cost_volume.py` (HR disparity), `interaction.py` (HR feature interaction), `feedback.py` (HRDIF), `network.py`
(the two recursions wired together), `losses.py` (the training objective); `blocks.py` its own small blocks,
`kernels.py` its fast forms behind the seam of models/kernels.py.

"official model.py:N", "train.py:N" and "loss.py:N" in these files are lines of the authors' code,
MIVRC/SSRDEFNet-PyTorch at commit 4d95c17.
"""
from models.registry import GRAD_CHECKPOINT_OPTION, ModelEntry, Option, Recipe, register_model
from models.ssrdefnet.losses import SSRDEFNetLoss
from models.ssrdefnet.network import SSRDEFNet, SSRDEFNetConfig
from models.ssrdefnet.outputs import SSRDEFNetOutput


def build(scale_factor: int = 4, **options) -> SSRDEFNet:
    return SSRDEFNet(SSRDEFNetConfig(scale_factor=scale_factor, **options))


register_model(ModelEntry(
    name='ssrdefnet',
    build=build,
    criterion=SSRDEFNetLoss,
    recipe=Recipe(source='paper Sec. 4.1 and official train.py', batch_size=12, optimizer='adam', lr=2e-4,
                  schedule='step', n_steps=30, gamma=0.5, n_epochs=80),
    scales=(2, 4),
    options=(
        Option('fix_right_cost_volume', dict(
            action='store_true',
            help="SSRDE-FNet: sample the right-view HR cost volume at the right view's own hypotheses instead of "
                 "the left view's (official quirk, kept by default because the released weights use it)"),
            of_weights=True),
        GRAD_CHECKPOINT_OPTION,
    ),
    estimates_disparity=True,
    description='recursive stereo SR + HR disparity with HR disparity feedback',
    title='SSRDE-FNet',
    paper='Dai et al., Feedback Network for Mutually Boosted Stereo Image Super-Resolution and Disparity '
          'Estimation, ACM MM 2021',
))

__all__ = ['SSRDEFNet', 'SSRDEFNetConfig', 'SSRDEFNetLoss', 'SSRDEFNetOutput']
