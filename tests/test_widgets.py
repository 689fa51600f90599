import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest

from restrained import widgets as rw


def render(lr, wd):
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [lr, wd])
    ax.set_title(f"{lr:g} {wd:g}")
    return fig


def test_render_frames_grid_shape_and_distinct_pngs():
    frames = rw.render_frames(render, [0.1, 0.2, 0.3], [0.0, 1.0])
    assert len(frames) == 3 and all(len(row) == 2 for row in frames)
    flat = [png for row in frames for png in row]
    assert all(png.startswith(b"\x89PNG") for png in flat)
    assert len(set(flat)) == 6


def test_static_figure_links_sliders_to_stacks():
    box = rw.static_figure(render, [0.1, 0.2], [0.0, 0.5, 1.0])
    lr_slider, wd_slider, outer = box.children
    assert isinstance(lr_slider, widgets.SelectionSlider)
    assert [v for _, v in wd_slider.options] == [0.0, 0.5, 1.0]
    assert len(outer.children) == 2 and all(len(s.children) == 3 for s in outer.children)
    classes = [img._dom_classes for s in outer.children for img in s.children]
    assert ("grid-1-2",) in classes
    # one link for the lr slider, one per inner stack for the wd slider
    assert len(box._links) == 1 + 2
    sources = {link.source[0] for link in box._links}
    assert sources == {lr_slider, wd_slider}


def test_live_figure_is_interactive_with_log_slider():
    w = rw.live_figure(render, [0.001, 0.1], [0.0, 1.0])
    assert isinstance(w, widgets.interactive)
    kinds = {type(c).__name__ for c in w.children[:2]}
    assert kinds == {"FloatLogSlider", "FloatSlider"}


def test_mode_switch(monkeypatch):
    monkeypatch.setenv("SLIDERS_LIVE", "1")
    assert rw.is_live()
    assert isinstance(rw.lr_wd_figure(render, [0.1], [0.0]), widgets.interactive)
    monkeypatch.setenv("SLIDERS_LIVE", "0")
    assert not rw.is_live()
    assert isinstance(rw.lr_wd_figure(render, [0.1], [0.0]), widgets.VBox)
    monkeypatch.delenv("SLIDERS_LIVE")
    monkeypatch.setenv("JPY_SESSION_NAME", "x")
    assert rw.is_live()


@pytest.mark.parametrize(
    ("lrs", "wds", "name"),
    [([], [0.0], "lrs"), ([0.1], [float("nan")], "wds"), ([0.1, 0.1], [0.0], "lrs")],
)
def test_bad_grids_are_rejected(lrs, wds, name):
    with pytest.raises(ValueError, match=name):
        rw.static_figure(render, lrs, wds)
