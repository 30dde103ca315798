"""foramlib.viz.plots: figures the stages write."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from foramlib.viz import plots  # noqa: E402


def _shell(side=16, seed=0):
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:side, :side, :side] - side / 2
    r = np.sqrt(x**2 + y**2 + z**2)
    return ((r > side / 5) & (r < side / 3)).astype(np.float32) + 0.05 * rng.random((side,) * 3)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    matplotlib.pyplot.close(fig)
    return buf.getvalue()


def test_the_collection_figure_from_views_is_the_figure_from_volumes():
    """The curate stage passes each volume's four views, not the volumes: same picture."""
    volumes = [_shell(seed=k) for k in range(3)]
    labels = ["Alpha", "Beta", "Gamma"]
    from_volumes = plots.collection_figure(volumes, labels, title="virtual")
    views = [[np.array(v) for v in plots.orthogonal_views(vol)] for vol in volumes]
    from_views = plots.collection_figure(views, labels, title="virtual")
    assert len(from_views.axes) == 12
    assert _png(from_views) == _png(from_volumes)


@pytest.mark.parametrize(
    ("volumes", "labels", "message"),
    [
        ([_shell()], ["Alpha", "Beta"], "got 1 volumes but 2 labels"),
        ([], [], "needs at least one volume"),
        ([[np.zeros((4, 4))] * 3], ["Alpha"], "Alpha: expected a volume or its 4 views, got 3"),
    ],
)
def test_the_collection_figure_refuses_what_it_cannot_draw(volumes, labels, message):
    with pytest.raises(ValueError, match=message):
        plots.collection_figure(volumes, labels, title="virtual")
