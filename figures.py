"""Pictures: colour-coded maps and figures (matplotlib, headless, imported when first drawn: it costs start-up
time that a script which draws nothing should not pay)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

def pyplot():
    """matplotlib.pyplot with the headless Agg backend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = 'magma',
             invalid: np.ndarray | None = None) -> np.ndarray:
    """HxW map -> HxWx3 uint8 colour image with a fixed value range; `invalid` pixels (and non-finite ones) black."""
    import matplotlib
    normalised = (np.nan_to_num(values.astype(np.float64), nan=vmin) - vmin) / max(vmax - vmin, 1e-12)
    rgb = matplotlib.colormaps[cmap](np.clip(normalised, 0, 1))[:, :, :3]
    bad = ~np.isfinite(values) if invalid is None else (invalid | ~np.isfinite(values))
    rgb[bad] = 0
    return np.floor(rgb * 255 + 0.5).astype(np.uint8)


def save_figure(path: str | os.PathLike, panels: list[dict], columns: int = 2, title: str | None = None) -> None:
    """Grid of panels. A panel is {'title', 'image': HxWx3 in [0, 1]} or
    {'title', 'map': HxW, 'vmin', 'vmax', 'cmap', 'label'} (drawn with a colour bar labelled `label`)."""
    plt = pyplot()
    rows = (len(panels) + columns - 1) // columns
    first = panels[0].get('image', panels[0].get('map'))
    aspect = first.shape[0] / first.shape[1]
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 6 * aspect * rows + 0.8), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(panel['title'], fontsize=10)
        ax.axis('off')
        if 'image' in panel:
            ax.imshow(np.clip(panel['image'], 0, 1))
        else:
            shown = np.ma.masked_invalid(panel['map'].astype(np.float64))
            im = ax.imshow(shown, cmap=panel.get('cmap', 'magma'), vmin=panel['vmin'], vmax=panel['vmax'])
            fig.colorbar(im, ax=ax, fraction=0.046 * aspect if aspect < 1 else 0.046, pad=0.02,
                         label=panel.get('label', ''))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
