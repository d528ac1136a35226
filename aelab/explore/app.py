"""The explorer's page: one Bokeh document per browser session, its callbacks run on the server.

Map (hover shows the image, served by /img/<i>.png), tap to choose a point; the chosen point's image,
its reconstruction and an edited version (sliders along code dimensions or principal directions,
plus an attribute vector with a strength), and the morph strip from the previously chosen point.
Images are PNG data URIs in Divs, tagged `data-role` so a browser test can find and read them.
"""
from __future__ import annotations

import base64
import io
import math
from html import escape

import numpy as np
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import Button, ColumnDataSource, Div, HoverTool, Legend, LegendItem, Select, Slider
from bokeh.palettes import Category10_10, Turbo256
from bokeh.plotting import figure
from bokeh.transform import factor_cmap
from PIL import Image

from .space import MAX_SLIDERS, Space

SHOWN = 84  # CSS px of an image's longer side (a morph step: 2/3 of it); 28x28 -> x3, 8x8 -> x10
VIEWS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
ATTRIBUTES = {"ink": "ink: heaviest minus lightest images", "class": "class A → class B"}


def png(image: np.ndarray) -> bytes:
    """uint8 (C, H, W) -> PNG bytes (grey for one channel, RGB for three)."""
    arr = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def size_style(h: int, w: int, px: int = SHOWN) -> str:
    """CSS that shows an h x w image `px` wide (longer side), scaled by whole pixels without smoothing."""
    zoom = max(1, px // max(h, w))
    return f"width:{zoom * w}px;height:{zoom * h}px;image-rendering:pixelated"


def img_tag(image: np.ndarray, role: str, px: int = SHOWN, **data: object) -> str:
    """An <img> of a uint8 (C, H, W) image as a PNG data URI."""
    attrs = " ".join(f'data-{k}="{v}"' for k, v in data.items())
    uri = base64.b64encode(png(image)).decode()
    return (f'<img data-role="{role}" {attrs} src="data:image/png;base64,{uri}" '
            f'style="{size_style(*image.shape[1:], px)};margin:1px">')


def clamped(slider: Slider, default: float) -> float:
    """The slider's value held to [start, end]: a browser session can send any value (a huge morph
    `steps` would make the server decode millions of images); not a finite number -> `default`."""
    v = slider.value
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        v = default
    return float(min(max(v, slider.start), slider.end))


def palette(n: int) -> list[str]:
    return list(Category10_10[:n]) if n <= 10 else [Turbo256[int(i)] for i in np.linspace(0, 255, n)]


class Explorer:
    """The widgets of one session and what each does; `chosen` is the point that edits act on."""

    def __init__(self, space: Space, title: str):
        self.s, self.title = space, title
        self.chosen, self.previous = 0, None
        self.view = next(iter(space.maps))

    # -- the map
    def map_figure(self):
        s = self.s
        names = [s.class_name(int(y)) for y in s.labels]
        factors = [s.class_name(y) for y in sorted(set(int(y) for y in s.labels))]
        xy = s.maps[self.view]
        self.source = ColumnDataSource({"x": xy[:, 0], "y": xy[:, 1], "label": names,
                                        "index": np.arange(len(names))})
        p = figure(name="map", width=700, height=600, tools="pan,wheel_zoom,box_zoom,reset,tap",
                   active_scroll="wheel_zoom", title=f"test codes, {VIEWS[self.view]}")
        r = p.scatter("x", "y", source=self.source, size=5, alpha=0.7, nonselection_alpha=0.7,
                      color=factor_cmap("label", palette(len(factors)), factors))
        style = size_style(*s.images.shape[2:])
        tip = f'<div><img data-role="hover" src="img/@index.png" style="{style}"><div>@label (#@index)</div></div>'
        p.add_tools(HoverTool(renderers=[r], tooltips=tip))
        first = {name: names.index(name) for name in factors}  # a legend entry in class order, not data order
        items = [LegendItem(label=f, renderers=[r], index=first[f]) for f in factors]
        p.add_layout(Legend(items=items, label_text_font_size="8pt"), "right")  # beside the map, not over it
        self.marks = ColumnDataSource({"x": [], "y": [], "text": []})
        p.scatter("x", "y", source=self.marks, size=16, fill_alpha=0, line_color="black", line_width=2)
        p.text("x", "y", text="text", source=self.marks, x_offset=8, y_offset=-8, text_font_style="bold")
        self.source.selected.on_change("indices", self.on_tap)
        self.plot = p
        return p

    def on_view(self, attr, old, new) -> None:
        if new not in self.s.maps:  # only the options offered
            return
        self.view, xy = new, self.s.maps[new]
        self.source.data.update(x=xy[:, 0], y=xy[:, 1])
        self.plot.title.text = f"test codes, {VIEWS[new]}"
        self.update_marks()

    def update_marks(self) -> None:
        xy = self.s.maps[self.view]
        pts = [(self.previous, "A")] if self.previous is not None else []
        pts.append((self.chosen, "B" if self.previous is not None else ""))
        self.marks.data = {"x": [float(xy[i, 0]) for i, _ in pts], "y": [float(xy[i, 1]) for i, _ in pts],
                           "text": [t for _, t in pts]}

    def on_tap(self, attr, old, new) -> None:
        if not new or not isinstance(new[0], (int, np.integer)) or not 0 <= new[0] < len(self.s.codes):
            return  # a tap on empty ground clears the selection (or a session sent no valid point)
        self.previous, self.chosen = self.chosen, int(new[0])
        self.update_marks()
        if self.s.decodes:
            self.show_chosen()
            self.show_morph()

    # -- the chosen point, its edit, the morph strip
    def controls(self):
        s = self.s
        label = "dim" if s.codes.shape[1] <= MAX_SLIDERS else "PC"  # code dimensions, or principal directions
        self.sliders = [Slider(start=-3, end=3, value=0, step=0.1, title=f"{label} {k + 1} (× std)",
                               name=f"slider{k}", width=170) for k in range(len(s.basis))]
        for sl in self.sliders:
            sl.on_change("value", self.on_edit)
        reset = Button(label="reset sliders", name="reset", width=120)
        reset.on_click(self.on_reset)
        self.label_of = {s.class_name(y): y for y in sorted(set(int(y) for y in s.labels))}
        classes = list(self.label_of)
        self.attr_kind = Select(title="attribute", value="ink", options=list(ATTRIBUTES.items()), name="attr_kind",
                                width=250)
        self.class_a = Select(title="class A", value=classes[0], options=classes, name="class_a", width=120)
        self.class_b = Select(title="class B", value=classes[min(1, len(classes) - 1)], options=classes,
                              name="class_b", width=120)
        self.strength = Slider(start=-3, end=3, value=0, step=0.05, title="attribute strength", name="strength",
                               width=250)
        self.steps = Slider(start=3, end=16, value=10, step=1, title="morph steps", name="steps", width=250)
        for w in (self.attr_kind, self.class_a, self.class_b, self.strength):
            w.on_change("value", self.on_edit)
        self.steps.on_change("value", lambda a, o, n: self.show_morph())
        self.chosen_div, self.edited_div = Div(name="chosen"), Div(name="edited")
        self.morph_div = Div(name="morph", text="<i>tap two points: the strip morphs from the first to the second</i>")
        self.show_chosen()
        sliders = column(*[row(*self.sliders[i:i + 3]) for i in range(0, len(self.sliders), 3)])
        attrs = column(row(self.attr_kind, self.class_a, self.class_b), row(self.strength, self.steps))
        return column(row(self.chosen_div, self.edited_div), sliders, reset, attrs, self.morph_div)

    def vector(self) -> np.ndarray:
        a, b = self.label_of.get(self.class_a.value), self.label_of.get(self.class_b.value)
        if self.attr_kind.value != "class" or a is None or b is None:  # "ink", or values not offered
            return self.s.attribute("ink")
        return self.s.attribute("class", a, b)

    def show_chosen(self) -> None:
        s, i = self.s, self.chosen
        recon = s.decode(s.codes[i:i + 1])[0]
        self.chosen_div.text = (f'<div data-index="{i}"><b>#{i} {escape(s.class_name(int(s.labels[i])))}</b><br>'
                                f'{img_tag(s.images[i], "original", index=i)}{img_tag(recon, "recon", index=i)}'
                                f'<br><small>test image · its reconstruction</small></div>')
        self.show_edited()

    def on_edit(self, attr: str, old: object, new: object) -> None:
        self.show_edited()

    def show_edited(self) -> None:
        z = self.s.edit(self.chosen, [clamped(sl, 0.0) for sl in self.sliders], self.vector(),
                        clamped(self.strength, 0.0))
        image = self.s.decode(z[None])[0]
        self.edited_div.text = f'<div><b>edited</b><br>{img_tag(image, "edited", index=self.chosen)}</div>'

    def on_reset(self) -> None:
        for sl in self.sliders:
            sl.value = 0

    def show_morph(self) -> None:
        if self.previous is None:
            return
        a, b = self.previous, self.chosen
        rows = []
        for path, codes in self.s.morph(a, b, round(clamped(self.steps, 10))).items():
            imgs = "".join(img_tag(im, "morph", SHOWN * 2 // 3, path=path, step=k)
                           for k, im in enumerate(self.s.decode(codes)))
            rows.append(f"<div><small>{path}</small><br>{imgs}</div>")
        self.morph_div.text = f'<div data-from="{a}" data-to="{b}"><b>morph A → B</b>{"".join(rows)}</div>'


def make_document(doc: Document, space: Space, title: str) -> None:
    """Fill one session's document (Bokeh calls this for every browser tab that opens the page)."""
    ex = Explorer(space, title)
    doc.title = f"aelab explore · {title}"
    head = (f"<h3 style='margin:4px 0'>{escape(title)}</h3><small>{len(space.codes)} test images · "
            "hover: the image · tap: choose a point (sliders and attributes act on it; the strip morphs from "
            "the point chosen before)</small>")
    parts = [Div(text=head, name="head", width=1200)]
    if space.note:
        parts.append(Div(text=f"<b>note:</b> {escape(space.note)}", name="note", width=1200))
    left = [ex.map_figure()]
    if len(space.maps) > 1:
        view = Select(title="map", value=ex.view, options=list(space.maps), name="view", width=150)
        view.on_change("value", ex.on_view)
        left.insert(0, view)
    ex.update_marks()
    body = row(column(*left), ex.controls()) if space.decodes else column(*left)
    doc.add_root(column(*parts, body))
