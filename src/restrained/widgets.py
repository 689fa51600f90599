"""The book's learning-rate / weight-decay slider figure, live in Jupyter and static on the web.

Every chapter explores its experiments over a grid of learning rates ``lr`` and weight
decays ``wd`` with one call::

    lr_wd_figure(render, lrs, wds)

where ``render(lr, wd)`` returns a matplotlib figure.

* **In a live Jupyter kernel** it returns an ``ipywidgets.interactive`` with continuous
  sliders, and recomputes the figure for any value.
* **When a notebook is executed for the book** (nbclient, ``jupyter-book``, nbval), it
  renders every grid point to a PNG ahead of time and returns two ``SelectionSlider`` s
  whose positions are ``jslink`` -ed to nested ``Stack`` s of images. The links run in the
  browser, so the static page switches figures with no kernel. ``jslink`` can only copy a
  value, so the lr slider drives the outer stack and the wd slider drives *every* inner
  stack; exactly one image is in the page at a time.

The mode is chosen by :func:`is_live`: Jupyter servers set ``JPY_SESSION_NAME`` for their
kernels, nbclient does not. ``SLIDERS_LIVE=0`` or ``1`` overrides the guess (the Makefile
sets 0 for book builds).
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

Render = Callable[[float, float], Figure]


def is_live() -> bool:
    """True inside a Jupyter server's kernel, False under nbclient, nbval or jupyter-book."""
    forced = os.environ.get("SLIDERS_LIVE")
    if forced is not None:
        return forced == "1"
    return "JPY_SESSION_NAME" in os.environ


def figure_png(fig: Figure, dpi: int = 72) -> bytes:
    """Encode a figure as PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _check_grid(name: str, values: Sequence[float]) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"{name} must hold at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must hold finite numbers, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat values, got {values}")
    return values


def render_frames(
    render: Render, lrs: Sequence[float], wds: Sequence[float], dpi: int = 72
) -> list[list[bytes]]:
    """PNG bytes of ``render(lr, wd)`` on the grid: ``frames[i][j]`` is ``(lrs[i], wds[j])``."""
    lrs, wds = _check_grid("lrs", lrs), _check_grid("wds", wds)
    return [[figure_png(render(lr, wd), dpi) for wd in wds] for lr in lrs]


def _label(v: float) -> str:
    return f"{v:g}"


def static_figure(
    render: Render,
    lrs: Sequence[float],
    wds: Sequence[float],
    *,
    lr_label: str = "learning rate",
    wd_label: str = "weight decay",
    dpi: int = 72,
) -> widgets.VBox:
    """Two grid sliders flipping between precomputed PNGs; works in a page with no kernel."""
    lrs, wds = _check_grid("lrs", lrs), _check_grid("wds", wds)
    frames = render_frames(render, lrs, wds, dpi)
    style = {"description_width": "initial"}
    lr_slider = widgets.SelectionSlider(
        options=[(_label(v), v) for v in lrs], description=lr_label, style=style
    )
    wd_slider = widgets.SelectionSlider(
        options=[(_label(v), v) for v in wds], description=wd_label, style=style
    )
    inner = []
    for i, row in enumerate(frames):
        images = [
            widgets.Image(value=png, format="png").add_class(f"grid-{i}-{j}")
            for j, png in enumerate(row)
        ]
        inner.append(widgets.Stack(images, selected_index=0))
    outer = widgets.Stack(inner, selected_index=0)
    links = [widgets.jslink((lr_slider, "index"), (outer, "selected_index"))]
    links += [widgets.jslink((wd_slider, "index"), (stack, "selected_index")) for stack in inner]
    box = widgets.VBox([lr_slider, wd_slider, outer]).add_class("lr-wd-figure")
    box._links = links  # the Link models must stay alive to be saved with the page
    return box


def live_figure(
    render: Render,
    lrs: Sequence[float],
    wds: Sequence[float],
    *,
    lr_label: str = "learning rate",
    wd_label: str = "weight decay",
) -> widgets.interactive:
    """Continuous sliders that re-run ``render`` in the kernel (log scale for wide ranges)."""
    lrs, wds = _check_grid("lrs", lrs), _check_grid("wds", wds)
    from IPython.display import display

    def slider(values: list[float], label: str) -> widgets.ValueWidget:
        lo, hi = min(values), max(values)
        common = {"value": values[0], "description": label, "continuous_update": False}
        common["style"] = {"description_width": "initial"}
        if lo > 0 and hi / lo > 10:
            return widgets.FloatLogSlider(
                min=math.log10(lo), max=math.log10(hi), step=0.01, base=10, **common
            )
        step = (hi - lo) / 200 if hi > lo else 1.0
        return widgets.FloatSlider(min=lo, max=hi if hi > lo else lo + 1, step=step, **common)

    def show(lr: float, wd: float) -> None:
        fig = render(lr, wd)
        display(fig)
        plt.close(fig)

    return widgets.interactive(show, lr=slider(lrs, lr_label), wd=slider(wds, wd_label))


def lr_wd_figure(
    render: Render,
    lrs: Sequence[float],
    wds: Sequence[float],
    *,
    live: bool | None = None,
    **labels: str,
) -> widgets.Widget:
    """The book's two-slider figure: live in a kernel, precomputed for the static book.

    Args:
        render: ``render(lr, wd)`` returns a matplotlib figure.
        lrs, wds: grid values for the static page (and the slider ranges when live).
        live: force a mode; by default :func:`is_live` decides.
        labels: ``lr_label`` and ``wd_label`` for the slider captions.
    """
    if live is None:
        live = is_live()
    return (live_figure if live else static_figure)(render, lrs, wds, **labels)
