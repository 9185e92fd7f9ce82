"""Figures of structure, drawn by code: blocks, data flow, tiling, caches and pipelines.

Every function returns a matplotlib ``Figure`` (made with pyplot, in the course style) and
never calls ``plt.show()``: a notebook cell ends with ``plt.show()`` and the figure is saved in
the notebook as a PNG output, so it renders in JupyterLab, Colab, GitHub and nbviewer alike.

    >>> import matplotlib.pyplot as plt
    >>> from llmlab import diagrams
    >>> fig = diagrams.transformer_block(norm="pre")
    >>> plt.show()

The figures (each a function): :func:`transformer_block`, :func:`pre_vs_post_norm`,
:func:`encoder_decoder`, :func:`head_split_merge`, :func:`rope_rotation`,
:func:`attention_tiling`, :func:`kv_cache`, :func:`bpe_merges`, :func:`data_pipeline`,
:func:`training_loop`, :func:`sparse_attention_pattern`.

They are built from one small primitive, :class:`Diagram`: a canvas in grid units (one unit
is ``unit`` inches, y grows upwards) with labelled boxes coloured by kind, straight and elbow
arrows, residual ``⊕`` nodes, group frames ("× N layers"), notes such as shapes
``(batch, seq, d_model)``, and matrices drawn as coloured grids. matplotlib is imported inside
the functions, so ``import llmlab`` stays fast.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from llmlab.validate import require_int, require_positive_int

__all__ = [
    "KIND_COLORS",
    "HEAD_COLORS",
    "Box",
    "Diagram",
    "transformer_block",
    "pre_vs_post_norm",
    "encoder_decoder",
    "head_split_merge",
    "rope_rotation",
    "attention_tiling",
    "kv_cache",
    "bpe_merges",
    "data_pipeline",
    "training_loop",
    "sparse_attention_pattern",
    "lora_layer",
]

# (fill, edge) per kind of box: one colour per role, the same in every figure.
KIND_COLORS = {
    "io": ("#EEEEEE", "#616161"),
    "op": ("#E4E9F5", "#55658A"),
    "norm": ("#FFF1BF", "#A8861A"),
    "attention": ("#FAD7C8", "#BF5530"),
    "ffn": ("#D3E5F7", "#2F6EA8"),
    "add": ("#FFFFFF", "#333333"),
    "cache": ("#E7DBF2", "#7A4E9C"),
    "data": ("#D9EED3", "#4A8A3A"),
}
# One colour per attention head (light fills that keep black text readable).
HEAD_COLORS = ["#8DB8E8", "#F4A582", "#9ED39A", "#C9A9E0", "#F2D36B", "#8FD3D0", "#E8A0C0"]

_INK = "#222222"
_MUTED = "#555555"
_FONT = 10  # box labels
_SMALL = 9  # notes, shapes, cell labels: never below 9 pt


@dataclass(frozen=True)
class Box:
    """A placed box (or ``⊕`` node): centre ``(x, y)``, width ``w`` and height ``h`` in grid units."""

    x: float
    y: float
    w: float
    h: float

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.h / 2)

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)


def _point(p) -> tuple[float, float]:
    return (p.x, p.y) if isinstance(p, Box) else (float(p[0]), float(p[1]))


def _facing(box: Box, toward: tuple[float, float]) -> tuple[float, float]:
    """The side of ``box`` that faces the point ``toward``."""
    tx, ty = toward
    if abs(tx - box.x) <= box.w / 2:  # straight above or below
        return (tx, box.y + math.copysign(box.h / 2, ty - box.y))
    if abs(ty - box.y) <= box.h / 2:  # straight left or right
        return (box.x + math.copysign(box.w / 2, tx - box.x), ty)
    dx, dy = tx - box.x, ty - box.y
    if abs(dy) * box.w >= abs(dx) * box.h:
        return box.bottom if dy < 0 else box.top
    return box.left if dx < 0 else box.right


def _text_width(s: str, size: float, unit: float, **font) -> float:
    """The width of the widest line of ``s`` at ``size`` points, in units of ``unit`` inches."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    prop = FontProperties(size=size, **font)
    to_path = TextToPath()
    widest = max(
        to_path.get_text_width_height_descent(line, prop, ismath=False)[0] for line in s.split("\n")
    )
    return widest / 72 / unit


def _display_token(token: str) -> str:
    """A token as it can be seen: a space as ␣, a newline as ↵, a tab as ⇥."""
    return token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")


class Diagram:
    """A canvas in grid units for figures of structure.

    width, height: the canvas in grid units; the figure is ``width * unit`` by
    ``height * unit`` inches (keep it within 10 inches wide for a notebook). y grows upwards.
    title: drawn bold at the top centre (keep the top unit free for it).

    Boxes are placed by their centre and return a :class:`Box`; arrows take boxes or points.
    The matplotlib ``Figure`` is :attr:`figure`, its one ``Axes`` is :attr:`ax`.
    """

    def __init__(self, width: float, height: float, *, unit: float = 0.5, title: str | None = None):
        import matplotlib as mpl
        import matplotlib.pyplot as plt

        from llmlab.plotting import COURSE_STYLE

        if not (width > 0 and height > 0 and unit > 0):
            raise ValueError(f"width, height, unit: expected > 0, got {width}, {height}, {unit}")
        self.width, self.height, self.unit = float(width), float(height), float(unit)
        with mpl.rc_context(COURSE_STYLE):
            self.figure = plt.figure(figsize=(width * unit, height * unit))
            self.ax = self.figure.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.set_axis_off()
        self._n_boxes = 0
        if title:
            self.text(width / 2, height - 0.45, title, size=12, weight="bold")

    # -- text -------------------------------------------------------------------------------
    def text(self, x: float, y: float, s: str, *, size: float = _FONT, **kwargs):
        """Plain text centred at ``(x, y)`` (pass ``ha``/``va`` to anchor it otherwise)."""
        kwargs.setdefault("ha", "center")
        kwargs.setdefault("va", "center")
        kwargs.setdefault("color", _INK)
        return self.ax.text(x, y, s, fontsize=max(size, _SMALL), parse_math=False, **kwargs)

    def note(self, x: float, y: float, s: str, **kwargs):
        """A grey italic annotation, e.g. a shape ``(batch, seq, d_model)``."""
        kwargs.setdefault("color", _MUTED)
        kwargs.setdefault("style", "italic")
        kwargs.setdefault("size", _SMALL)
        return self.text(x, y, s, **kwargs)

    def text_width(self, s: str, size: float = _FONT, **font) -> float:
        """The width of ``s`` at ``size`` points, in grid units (its widest line)."""
        return _text_width(s, size, self.unit, **font)

    # -- boxes ------------------------------------------------------------------------------
    def box(
        self,
        x: float,
        y: float,
        label: str,
        kind: str = "op",
        *,
        w: float | None = None,
        h: float = 0.7,
        size: float = _FONT,
        dashed: bool = False,
        fill: str | None = None,
        **text_kwargs,
    ) -> Box:
        """A rounded box centred at ``(x, y)`` coloured by ``kind`` (a key of :data:`KIND_COLORS`).

        ``w=None`` fits the width to the label; ``fill`` overrides the kind's fill colour;
        ``text_kwargs`` go to the label (``family="monospace"``). The patch's gid is
        ``box-<n>`` and its label's ``box-<n>-label``, so a test can check that every label
        fits inside its box.
        """
        from matplotlib.patches import FancyBboxPatch

        if kind not in KIND_COLORS:
            raise ValueError(f"kind: expected one of {sorted(KIND_COLORS)}, got {kind!r}")
        if w is None:
            font = {k: text_kwargs[k] for k in ("family", "weight") if k in text_kwargs}
            w = self.text_width(label, size, **font) + 0.6
        kind_fill, edge = KIND_COLORS[kind]
        fill = fill or kind_fill
        pad = min(0.12, h / 4, w / 4)
        patch = FancyBboxPatch(
            (x - w / 2 + pad, y - h / 2 + pad),
            w - 2 * pad,
            h - 2 * pad,
            boxstyle=f"round,pad={pad}",
            facecolor=fill,
            edgecolor=edge,
            linewidth=1.3,
            linestyle="--" if dashed else "-",
            zorder=2,
        )
        gid = f"box-{self._n_boxes}"
        self._n_boxes += 1
        patch.set_gid(gid)
        self.ax.add_patch(patch)
        if label:
            t = self.text(x, y, label, size=size, zorder=3, **text_kwargs)
            t.set_gid(f"{gid}-label")
        return Box(x, y, w, h)

    def add_node(self, x: float, y: float, r: float = 0.28) -> Box:
        """The residual add: a ``⊕`` of radius ``r`` (the sum of the stream and a sublayer)."""
        from matplotlib.patches import Circle

        # DejaVu Sans (shipped with matplotlib) draws ⊕ as a ring 0.655 em wide whose centre is
        # 0.314 em above the baseline: size the glyph so the ring has radius r, on a white disc.
        size = 2 * r * self.unit * 72 / 0.655
        self.ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor="none", zorder=2))
        y_base = y - 0.314 * size / 72 / self.unit
        t = self.text(x, y_base, "⊕", size=size, va="baseline", family="DejaVu Sans")
        t.set_zorder(3)
        return Box(x, y, 2 * r, 2 * r)

    def dot(self, x: float, y: float, r: float = 0.07, color: str = _INK):
        """A small filled dot: where a branch leaves a line."""
        from matplotlib.patches import Circle

        self.ax.add_patch(Circle((x, y), r, color=color, zorder=4))

    def group(
        self,
        x0: float,
        y0: float,
        x1: float,
        y1: float,
        title: str = "",
        *,
        title_at: str = "top-right",
        color: str = "#8A8A8A",
    ):
        """A dashed frame around ``(x0, y0)-(x1, y1)`` with a title on its edge ("× N layers")."""
        from matplotlib.patches import FancyBboxPatch

        self.ax.add_patch(
            FancyBboxPatch(
                (x0, y0),
                x1 - x0,
                y1 - y0,
                boxstyle="round,pad=0,rounding_size=0.25",
                facecolor="#FAFAFA",
                edgecolor=color,
                linewidth=1.2,
                linestyle=(0, (4, 3)),
                zorder=0,
            )
        )
        if title:
            vertical, horizontal = title_at.split("-")
            x = {"left": x0 + 0.3, "right": x1 - 0.3, "center": (x0 + x1) / 2}[horizontal]
            y = y1 if vertical == "top" else y0
            bbox = dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none")
            self.text(x, y, title, ha=horizontal, color=_MUTED, weight="bold", bbox=bbox, zorder=1)

    # -- arrows -----------------------------------------------------------------------------
    def arrow(
        self,
        start,
        end,
        *,
        elbow: str | None = None,
        label: str | None = None,
        label_side: str = "auto",
        color: str = _INK,
        dashed: bool = False,
        head: bool = True,
        lw: float = 1.4,
    ):
        """An arrow from ``start`` to ``end`` (each a :class:`Box` or an ``(x, y)`` point).

        elbow: None for a straight arrow; "hv" goes horizontally first, then vertically; "vh"
        vertically first. A box is left or entered by the side that faces the other end.
        label: written beside the longest segment, on ``label_side`` ("left", "right",
        "above", "below"; "auto" picks right of a vertical segment, above a horizontal one).
        """
        p0, p1 = _point(start), _point(end)
        if elbow is None:
            a = _facing(start, p1) if isinstance(start, Box) else p0
            b = _facing(end, a) if isinstance(end, Box) else p1
            if isinstance(start, Box):
                a = _facing(start, b)
            points = [a, b]
        elif elbow in ("hv", "vh"):
            corner = (p1[0], p0[1]) if elbow == "hv" else (p0[0], p1[1])
            a = _facing(start, corner) if isinstance(start, Box) else p0
            b = _facing(end, corner) if isinstance(end, Box) else p1
            corner = (b[0], a[1]) if elbow == "hv" else (a[0], b[1])
            points = [a, corner, b]
        else:
            raise ValueError(f"elbow: expected None, 'hv' or 'vh', got {elbow!r}")
        return self.path(
            points,
            label=label,
            label_side=label_side,
            color=color,
            dashed=dashed,
            head=head,
            lw=lw,
        )

    def path(
        self,
        points: Sequence[tuple[float, float]],
        *,
        label: str | None = None,
        label_side: str = "auto",
        color: str = _INK,
        dashed: bool = False,
        head: bool = True,
        lw: float = 1.4,
    ):
        """A polyline through ``points`` with an arrowhead at the last one (``head=False``: none)."""
        from matplotlib.patches import FancyArrowPatch
        from matplotlib.path import Path

        points = [(float(x), float(y)) for x, y in points]
        patch = FancyArrowPatch(
            path=Path(points),
            arrowstyle="-|>,head_length=0.5,head_width=0.22" if head else "-",
            mutation_scale=14,
            color=color,
            linewidth=lw,
            linestyle="--" if dashed else "-",
            joinstyle="miter",
            capstyle="butt",
            zorder=1,
        )
        self.ax.add_patch(patch)
        if label:
            segments = list(zip(points, points[1:], strict=False))
            (xa, ya), (xb, yb) = max(segments, key=lambda s: math.dist(*s))
            xm, ym = (xa + xb) / 2, (ya + yb) / 2
            vertical = abs(xb - xa) < abs(yb - ya)
            side = label_side
            if side == "auto":
                side = "right" if vertical else "above"
            gap = 0.15
            placement = {
                "right": dict(x=xm + gap, y=ym, ha="left", va="center"),
                "left": dict(x=xm - gap, y=ym, ha="right", va="center"),
                "above": dict(x=xm, y=ym + gap, ha="center", va="bottom"),
                "below": dict(x=xm, y=ym - gap, ha="center", va="top"),
            }[side]
            self.text(placement.pop("x"), placement.pop("y"), label, size=_SMALL, **placement)
        return patch

    # -- matrices ---------------------------------------------------------------------------
    def grid(
        self,
        x: float,
        y: float,
        colors: Sequence[Sequence[str | None]],
        *,
        cell: float = 0.4,
        labels: Sequence[Sequence[str]] | None = None,
        size: float = _SMALL,
        edgecolor: str = "white",
        lw: float = 1.0,
    ) -> tuple[float, float, float, float]:
        """A matrix of coloured cells with its top-left corner at ``(x, y)``; rows go down.

        colors: one colour per cell (None: white). labels: optional text per cell.
        Returns the extent ``(x0, y0, x1, y1)``.
        """
        from matplotlib.collections import PatchCollection
        from matplotlib.patches import Rectangle

        n_rows, n_cols = len(colors), max(len(row) for row in colors)
        cells, fills = [], []
        for i, row in enumerate(colors):
            for j, c in enumerate(row):
                cx, cy = x + j * cell, y - (i + 1) * cell
                cells.append(Rectangle((cx, cy), cell, cell))
                fills.append(c or "white")
                if labels is not None and labels[i][j]:
                    self.text(cx + cell / 2, cy + cell / 2, labels[i][j], size=size, zorder=3)
        # One collection per matrix: a 32 x 32 grid stays fast to build and to draw.
        self.ax.add_collection(
            PatchCollection(cells, facecolors=fills, edgecolors=edgecolor, linewidths=lw, zorder=2)
        )
        return (x, y - n_rows * cell, x + n_cols * cell, y)

    def frame(self, x0: float, y0: float, x1: float, y1: float, *, color: str = _INK, lw=1.3):
        """A plain rectangle outline (e.g. around a grid or a tile)."""
        from matplotlib.patches import Rectangle

        self.ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, lw=lw, zorder=4)
        )

    def hatch(self, x: float, y: float, w: float, h: float, *, color: str = "#9A9A9A"):
        """Diagonal hatching over the rectangle ``(x, y, w, h)``: masked, not computed."""
        from matplotlib.patches import Rectangle

        self.ax.add_patch(
            Rectangle((x, y), w, h, fill=False, hatch="///", edgecolor=color, lw=0, zorder=3)
        )

    def legend(self, x: float, y: float, entries: Sequence[tuple], *, step: float = 0.5):
        """Swatches with labels, top-down from ``(x, y)``.

        entries: ``(colour, text)`` or ``(colour, text, hatched)``.
        """
        from matplotlib.patches import Rectangle

        for k, (color, label, *hatched) in enumerate(entries):
            yy = y - k * step
            self.ax.add_patch(
                Rectangle((x, yy - 0.15), 0.3, 0.3, facecolor=color, edgecolor="#999999", zorder=2)
            )
            if hatched and hatched[0]:
                self.hatch(x, yy - 0.15, 0.3, 0.3)
            self.text(x + 0.45, yy, label, size=_SMALL, ha="left")


# --------------------------------------------------------------------------------------------
# Blocks


def _block(d: Diagram, ox: float, norm: str, norm_name: str, models: str) -> None:
    """One Transformer block, bottom-up, at x offset ``ox`` (a panel 7.4 units wide)."""
    sx, bx = ox + 1.9, ox + 5.2  # the residual stream and the sublayer column
    top = d.height
    d.text(ox + 3.7, top - 0.4, _NORM_TITLES[norm], size=11, weight="bold")
    d.note(ox + 3.7, top - 0.85, models)
    x_in = d.box(sx, 0.7, "x", "io", w=1.2)
    d.note(sx + 0.8, 0.7, "(batch, seq, d_model)", ha="left")
    stream_from = x_in
    y = 1.9
    frame_y0 = 1.45
    for name, kind in (("self-attention", "attention"), ("FFN", "ffn")):
        branch = y
        d.dot(sx, branch)
        if norm == "pre":
            n = d.box(bx, branch + 0.95, norm_name, "norm", w=2.8)
            d.path([(sx, branch), (bx, branch), n.bottom])
            f = d.box(bx, n.y + 1.2, name, kind, w=2.8)
            d.arrow(n, f)
        else:
            f = d.box(bx, branch + 1.0, name, kind, w=2.8)
            d.path([(sx, branch), (bx, branch), f.bottom])
        add = d.add_node(sx, f.y + 1.1)
        d.path([f.top, (bx, add.y), add.right])
        d.arrow(stream_from, add)
        stream_from = add
        y = add.y + 0.85
        if norm == "post":
            n = d.box(sx, add.y + 1.1, norm_name, "norm", w=2.0)
            d.arrow(add, n)
            stream_from = n
            y = n.y + 0.95
    out = d.box(sx, top - 1.75, "output", "io", w=1.6)
    frame_y1 = out.y - 0.7
    d.arrow(stream_from, out)
    d.note(sx + 1.0, out.y, "(batch, seq, d_model)", ha="left")
    d.group(ox + 0.35, frame_y0, ox + 7.1, frame_y1, "× N layers")
    d.text(
        ox + 0.65,
        (frame_y0 + frame_y1) / 2,
        "residual stream",
        size=_SMALL,
        rotation=90,
        color=_MUTED,
        style="italic",
    )


_NORM_TITLES = {"pre": "Pre-norm: x + F(norm(x))", "post": "Post-norm: norm(x + F(x))"}
_NORM_MODELS = {
    "pre": "GPT-2, LLaMA, most LLMs since 2019",
    "post": "the original Transformer, BERT",
}
_BLOCK_HEIGHT = 12.2


def transformer_block(norm: str = "pre", *, norm_name: str = "RMSNorm"):
    """One Transformer block: the residual stream drawn straight, each sublayer branching off it.

    norm: "pre" (GPT-2, LLaMA: ``x + F(norm(x))``, the stream itself is never normalised) or
    "post" (the original Transformer, BERT: ``norm(x + F(x))``, a norm after each ⊕).
    norm_name: the label of the norm boxes ("RMSNorm" or "LayerNorm").
    """
    if norm not in ("pre", "post"):
        raise ValueError(f"norm: expected 'pre' or 'post', got {norm!r}")
    d = Diagram(7.5, _BLOCK_HEIGHT, unit=0.55)
    _block(d, 0.0, norm, norm_name, _NORM_MODELS[norm])
    return d.figure


def pre_vs_post_norm(*, norm_name: str = "LayerNorm"):
    """Pre-norm and post-norm blocks side by side: the same sublayers, the norm moved."""
    d = Diagram(15.4, _BLOCK_HEIGHT, unit=0.58)
    _block(d, 0.0, "pre", norm_name, _NORM_MODELS["pre"])
    _block(d, 7.9, "post", norm_name, _NORM_MODELS["post"])
    return d.figure


def _mask_icon(d: Diagram, x: float, y: float, causal: bool, n: int = 4, cell: float = 0.24):
    """A tiny attention mask (rows: queries, columns: keys) with its top-left at ``(x, y)``."""
    on = "#D9734E"
    colors = [[on if (j <= i or not causal) else "#F2F2F2" for j in range(n)] for i in range(n)]
    x0, y0, x1, y1 = d.grid(x, y, colors, cell=cell, edgecolor="white")
    d.frame(x0, y0, x1, y1, color="#999999", lw=0.8)
    d.note(x + n * cell / 2, y0 - 0.25, "causal mask" if causal else "no mask")


def _sublayer_stack(d: Diagram, x: float, y: float, sublayers, w: float = 3.6):
    """Sublayers bottom-up from ``y``, each followed by "Add & Norm" with its residual line.

    Returns the boxes of the sublayers and the last Add & Norm.
    """
    boxes = []
    prev_top = (x, y)
    for label, kind, h in sublayers:
        branch_y = prev_top[1] + 0.35
        f = d.box(x, branch_y + 0.35 + h / 2, label, kind, w=w, h=h)
        d.arrow(prev_top, f.bottom)
        n = d.box(x, f.y + h / 2 + 0.75, "Add & Norm", "norm", w=w, h=0.55, size=_SMALL)
        d.arrow(f, n)
        # The residual: from below the sublayer, around its left, into Add & Norm.
        rx = x - w / 2 - 0.35
        d.dot(x, branch_y)
        d.path([(x, branch_y), (rx, branch_y), (rx, n.y), n.left])
        boxes.append(f)
        prev_top = n.top
    return boxes, n


def encoder_decoder():
    """The encoder-decoder Transformer: the decoder's cross-attention reads K, V from the encoder.

    Encoder layers: bidirectional self-attention and an FFN. Decoder layers: causal
    self-attention, cross-attention (queries from the decoder, keys and values from the
    encoder's output) and an FFN. Each sublayer is followed by Add & Norm (post-norm, as in
    Vaswani et al. 2017; T5 moves the norm before the sublayer).
    """
    d = Diagram(15.6, 13.4, unit=0.56, title="Encoder-decoder Transformer")
    ex, dx = 2.9, 11.2
    src = d.box(ex, 0.6, "source tokens", "io", w=3.0)
    tgt = d.box(dx, 0.6, "target tokens (shifted right)", "io", w=4.0)
    e_emb = d.box(ex, 1.7, "embedding + positions", "op", w=3.6)
    t_emb = d.box(dx, 1.7, "embedding + positions", "op", w=3.6)
    d.arrow(src, e_emb)
    d.arrow(tgt, t_emb)
    (e_attn, _), e_last = _sublayer_stack(
        d,
        ex,
        e_emb.top[1],
        [("self-attention\n(bidirectional)", "attention", 0.95), ("FFN", "ffn", 0.7)],
    )
    (t_attn, cross, _), t_last = _sublayer_stack(
        d,
        dx,
        t_emb.top[1],
        [
            ("self-attention\n(causal)", "attention", 0.95),
            ("cross-attention", "attention", 0.7),
            ("FFN", "ffn", 0.7),
        ],
    )
    d.group(ex - 2.35, e_emb.top[1] + 0.15, ex + 3.45, e_last.top[1] + 0.3, "× N encoder layers")
    d.group(dx - 2.35, t_emb.top[1] + 0.15, dx + 3.45, t_last.top[1] + 0.3, "× N decoder layers")
    _mask_icon(d, ex + 2.0, e_attn.y + 0.48, causal=False)
    _mask_icon(d, dx + 2.0, t_attn.y + 0.48, causal=True)

    enc_out = d.box(ex, e_last.top[1] + 1.2, "encoder output", "data", w=3.0)
    d.arrow(e_last, enc_out)
    d.note(ex, enc_out.y + 0.65, "(batch, src_seq, d_model)")
    # Cross-attention: K and V from the encoder output (the same for every decoder layer).
    mx = (ex + 3.45 + dx - 2.35) / 2 + 0.2
    d.path([enc_out.right, (mx, enc_out.y), (mx, cross.y), cross.left], lw=1.8, color="#BF5530")
    d.text(mx - 0.15, (enc_out.y + cross.y) / 2, "K, V", ha="right", color="#BF5530", weight="bold")
    d.text(dx + 0.15, cross.bottom[1] - 0.28, "Q", ha="left", color="#BF5530", weight="bold")

    head = d.box(dx, t_last.top[1] + 1.2, "linear + softmax", "op", w=3.0)
    probs = d.box(dx, head.y + 1.15, "next-token probabilities", "io", w=3.6)
    d.arrow(t_last, head)
    d.arrow(head, probs)
    d.note(ex, enc_out.y + 1.2, "computed once per input,\nread by every decoder layer")
    return d.figure


# --------------------------------------------------------------------------------------------
# Attention


def _lighten(color: str, amount: float) -> str:
    """``color`` mixed with white (``amount`` 0: unchanged, 1: white)."""
    from matplotlib.colors import to_hex, to_rgb

    r, g, b = to_rgb(color)
    return to_hex((r + (1 - r) * amount, g + (1 - g) * amount, b + (1 - b) * amount))


def head_split_merge(d_model: int = 8, n_heads: int = 2, *, seq: int = 4):
    """Multi-head attention's reshapes: split d_model into heads, attend per head, merge back.

    A (seq, d_model) matrix (q; k and v are split the same way) is viewed as
    (seq, heads, head_dim) and transposed to (heads, seq, head_dim); each head attends on its
    own; the outputs are transposed back and reshaped to (seq, d_model) (the concatenation of
    the heads), and W_O mixes them. Columns are coloured by the head that owns them.
    """
    d_model = require_positive_int(d_model, "d_model")
    n_heads = require_positive_int(n_heads, "n_heads")
    seq = require_positive_int(seq, "seq")
    if d_model % n_heads:
        raise ValueError(f"d_model: expected a multiple of n_heads={n_heads}, got {d_model}")
    if not (2 <= d_model <= 16 and n_heads <= len(HEAD_COLORS) and seq <= 8):
        raise ValueError(
            f"d_model, n_heads, seq: expected d_model in 2..16, n_heads <= {len(HEAD_COLORS)}, "
            f"seq <= 8 (a readable figure), got {d_model}, {n_heads}, {seq}"
        )
    hd = d_model // n_heads
    cell = 0.42 if d_model <= 8 else 0.3
    show_dims = d_model <= 8
    wide, narrow = d_model * cell, hd * cell
    label_h = 0.75 if show_dims else 0.45  # above a grid: its dims, then its name
    gap_head = label_h + 0.35
    stack_h = n_heads * seq * cell + (n_heads - 1) * gap_head
    fan_w, attn_w = 2.0, 3.3
    width = 0.5 + wide + fan_w + narrow + attn_w + narrow + fan_w + wide + 1.6 + wide + 0.4
    height = stack_h + label_h + 3.1
    unit = min(0.45, 9.8 / width)
    d = Diagram(width, height, unit=unit, title="Multi-head attention: split, attend, merge")

    stack_top = height - 1.2 - label_h
    top = stack_top - (stack_h - seq * cell) / 2  # the wide matrices, centred on the stack
    y_mid = top - seq * cell / 2

    def matrix(x, y, colors, label, dims, weight="normal"):
        x0, y0, x1, y1 = d.grid(x, y, colors, cell=cell)
        d.frame(x0, y0, x1, y1, color="#777777", lw=0.8)
        if show_dims:
            for j, dim in enumerate(dims):
                d.text(x + (j + 0.5) * cell, y + 0.22, str(dim), size=_SMALL, color=_MUTED)
        if label:
            d.text((x0 + x1) / 2, y + label_h - 0.05, label, weight=weight)
        return x0, y0, x1, y1

    by_head = [[HEAD_COLORS[j // hd] for j in range(d_model)] for _ in range(seq)]
    x = 0.5
    _, y0, x1, _ = matrix(x, top, by_head, "q = x W_Q", range(d_model))
    d.note((x + x1) / 2, y0 - 0.3, "(seq, d_model)")
    x_heads = x1 + fan_w
    x_outs = x_heads + narrow + attn_w
    x_cat = x_outs + narrow + fan_w
    head_tops = [stack_top - h * (seq * cell + gap_head) for h in range(n_heads)]
    for h, y in enumerate(head_tops):
        colors = [[HEAD_COLORS[h]] * hd for _ in range(seq)]
        name = f"head {h}" if narrow >= 1.0 else f"h{h}"
        matrix(x_heads, y, colors, name, range(h * hd, (h + 1) * hd), weight="bold")
        matrix(x_outs, y, colors, "", ())
        yc = y - seq * cell / 2
        a = d.box((x_heads + narrow + x_outs) / 2, yc, "attention", "attention", w=2.1, h=0.6)
        d.arrow((x_heads + narrow + 0.1, yc), a)
        d.arrow(a, (x_outs - 0.1, yc))
        d.arrow((x1 + 0.15, y_mid), (x_heads - 0.15, yc))  # split: a fan out to the heads
        d.arrow((x_outs + narrow + 0.15, yc), (x_cat - 0.15, y_mid))  # merge: a fan in
    stack_bottom = head_tops[-1] - seq * cell
    for xx in (x_heads, x_outs):
        d.note(xx + narrow / 2, stack_bottom - 0.3, "(heads, seq, head_dim)")
    d.note(
        (x_heads + narrow + x_outs) / 2,
        stack_bottom - 0.8,
        "softmax(q kᵀ / √head_dim) v, each head on its own",
    )
    # The words sit above the fans, level with "head 0": no arrow reaches that high.
    y_word = stack_top + label_h - 0.05
    d.text((x1 + x_heads) / 2, y_word, "split", weight="bold")
    d.text((x_outs + narrow + x_cat) / 2, y_word, "merge", weight="bold")
    d.note(
        width / 2,
        0.35,
        "split = view as (seq, heads, head_dim), then transpose;   "
        "merge = transpose back, then reshape to (seq, d_model)",
    )
    _, _, x2, _ = matrix(x_cat, top, by_head, "concat(heads)", range(d_model))
    d.note((x_cat + x2) / 2, y0 - 0.3, "(seq, d_model)")
    x_out = x2 + 1.6
    d.arrow((x2 + 0.1, y_mid), (x_out - 0.1, y_mid), label="× W_O", label_side="above")
    mixed = [["#B9A6C9"] * d_model for _ in range(seq)]
    matrix(x_out, top, mixed, "output", range(d_model))
    d.note(x_out + wide / 2, y0 - 0.3, "(seq, d_model)")
    d.note(x_out + wide / 2, y0 - 0.75, "W_O mixes the heads")
    return d.figure


def attention_tiling(seq: int = 8, block: int = 2, *, query_block: int | None = None):
    """FlashAttention's tiles: one program's walk over the score matrix, causal tiles skipped.

    The (seq, seq) score matrix Q·Kᵀ (rows: queries, columns: keys) is cut into
    (block, block) tiles. The program that owns query block ``query_block`` (default: the
    middle one) keeps its Q block on chip and visits the K, V tiles left to right up to the
    diagonal: tiles entirely above the diagonal are never loaded (every key is in the future),
    the diagonal tile is masked inside. Beside it, the online-softmax update that makes one
    pass enough: a running max m and sum l per query row, rescaled when m grows.
    """
    seq = require_positive_int(seq, "seq")
    block = require_positive_int(block, "block")
    if seq % block:
        raise ValueError(f"seq: expected a multiple of block={block}, got {seq}")
    n_blocks = seq // block
    if not 2 <= n_blocks <= 8 or seq > 16:
        raise ValueError(
            f"seq, block: expected seq <= 16 and 2..8 blocks (a readable figure), got "
            f"seq={seq}, block={block} ({n_blocks} blocks)"
        )
    if query_block is None:
        query_block = n_blocks // 2
    query_block = require_int(query_block, "query_block", 0)
    if query_block >= n_blocks:
        raise ValueError(f"query_block: expected 0..{n_blocks - 1}, got {query_block}")

    visited, diagonal, skipped, other, masked = (
        "#6A9FD8",
        "#A9C9EC",
        "#FFFFFF",
        "#E3E8EF",
        "#F4F4F4",
    )
    height = 10.0
    d = Diagram(16.6, height, unit=0.57, title="FlashAttention: the tiles one program visits")
    cell = min(0.55, 4.4 / seq)
    x0, top = 2.3, height - 2.6
    colors, labels = [], []
    for i in range(seq):
        row = []
        for j in range(seq):
            qb, kb = i // block, j // block
            if j > i:  # a future key: masked (white) or never loaded
                c = masked if qb == query_block and kb == qb else skipped
            elif qb == query_block:
                c = visited if kb < qb else diagonal
            else:
                c = other
            row.append(c)
        colors.append(row)
        labels.append([""] * seq)
    d.grid(x0, top, colors, cell=cell, edgecolor="#DDDDDD", lw=0.6)
    for i in range(seq):
        for j in range(i + 1, seq):
            if i // block == j // block == query_block:
                d.hatch(x0 + j * cell, top - (i + 1) * cell, cell, cell)
    side = block * cell
    for qb in range(n_blocks):
        for kb in range(n_blocks):
            tx, ty = x0 + kb * side, top - (qb + 1) * side
            d.frame(tx, ty, tx + side, ty + side, color="#9A9A9A", lw=0.8)
    # This program's row of tiles: numbered visits, then the skipped ones.
    y_row = top - (query_block + 0.5) * side
    for kb in range(n_blocks):
        tx = x0 + kb * side
        if kb <= query_block:
            d.frame(tx, y_row - side / 2, tx + side, y_row + side / 2, color=_INK, lw=2.0)
            d.text(tx + side / 2, y_row, str(kb + 1), weight="bold", size=11)
        else:
            d.text(tx + side / 2, y_row, "skip", size=_SMALL, color=_MUTED, style="italic")
    grid_w = seq * cell
    # The Q block on the left and the K, V blocks streamed past it on top.
    qx = x0 - 0.9
    q_colors = [[visited if i // block == query_block else other] for i in range(seq)]
    d.grid(qx, top, q_colors, cell=cell, edgecolor="white")
    d.text(qx - 0.2, y_row, f"Q block {query_block}\n(on chip)", ha="right", size=_SMALL)
    ky = top + 0.9
    k_colors = [[visited if j // block <= query_block else other for j in range(seq)]]
    d.grid(x0, ky, k_colors, cell=cell, edgecolor="white")
    d.text(x0 + grid_w / 2, ky + 0.35, "K, V blocks streamed in, one tile at a time", size=_SMALL)
    d.arrow((x0, ky - cell - 0.15), (x0 + side * (query_block + 1), ky - cell - 0.15), lw=1.2)
    d.note(x0 + grid_w / 2, top - grid_w - 0.35, "scores S = Q Kᵀ: rows are queries, columns keys")

    legend_y = top - grid_w - 1.0
    d.legend(
        0.6,
        legend_y,
        [
            (visited, "visited tile (all keys in the past)"),
            (diagonal, "diagonal tile: visited, future keys masked", False),
            (masked, "masked: a future key inside the diagonal tile", True),
            (skipped, "skipped: every key in the future, never loaded"),
            (other, "other query blocks: other programs, in parallel"),
        ],
        step=0.45,
    )

    # The online softmax, per row of the Q block, for each visited tile j.
    tx = 8.9
    lines = [
        ("for each visited tile j = 1, 2, ...:", False),
        ("s     = q @ k_j.T * scale", True),
        ("m_new = max(m, rowmax(s))", True),
        ("α     = exp(m - m_new)", True),
        ("p     = exp(s - m_new)", True),
        ("l     = α * l + rowsum(p)", True),
        ("acc   = α * acc + p @ v_j", True),
        ("m     = m_new", True),
        ("after the last tile:  out = acc / l", False),
    ]
    d.text(tx, top + 0.35, "Online softmax: one pass over the tiles", ha="left", weight="bold")
    d.note(tx, top - 0.15, "per query row: m = running max, l = running sum", ha="left")
    for k, (line, code) in enumerate(lines):
        y = top - 0.75 - 0.5 * k
        font = dict(family="monospace") if code else {}
        d.text(tx + (0.5 if code else 0), y, line, ha="left", size=_SMALL + 0.5, **font)
    d.note(
        tx,
        top - 0.75 - 0.5 * len(lines) - 0.1,
        "α rescales what was summed under the old max;\n"
        "the (seq, seq) matrix is never written to memory",
        ha="left",
    )
    return d.figure


def kv_cache(steps: int = 4):
    """Decoding with and without a KV cache: what each step computes and what it reads.

    At step t the new token's query q_t attends over the keys and values of all t tokens.
    With a cache, only the new token's k_t, v_t are computed and appended; the earlier ones
    are read back. Without one, all t keys and values are recomputed every step: 1 + 2 + ...
    + steps projections instead of steps.
    """
    steps = require_positive_int(steps, "steps")
    if steps > 8:
        raise ValueError(f"steps: expected 1..8 (a readable figure), got {steps}")
    cached, new, recomputed = KIND_COLORS["cache"][0], "#9ED39A", "#F4B183"
    cell, row_h = 0.6, 1.75
    panel_w = steps * cell + 4.4
    x_with, x_without = 2.2, 2.2 + panel_w + 0.6
    width = x_without + panel_w + 0.2
    height = 3.6 + steps * row_h
    d = Diagram(
        width, height, unit=min(0.55, 9.8 / width), title="KV cache: compute each k, v once"
    )
    top = height - 1.4
    d.text(x_with + panel_w / 2 - 0.4, top, "with a KV cache", weight="bold")
    d.text(x_without + panel_w / 2 - 0.4, top, "without a cache", weight="bold")
    for t in range(1, steps + 1):
        y = top - 0.55 - (t - 1) * row_h  # top of this step's K row
        d.text(0.3, y - cell, f"step {t}", ha="left", weight="bold")
        d.note(0.3, y - cell - 0.45, f"new token x{_sub(t)}", ha="left")
        for x, with_cache in ((x_with, True), (x_without, False)):

            def fill(j, with_cache=with_cache, t=t):
                if not with_cache:
                    return recomputed
                return new if j == t - 1 else cached

            for r, name in enumerate("kv"):
                d.grid(
                    x,
                    y - r * cell,
                    [[fill(j) for j in range(t)]],
                    cell=cell,
                    labels=[[f"{name}{_sub(j + 1)}" for j in range(t)]],
                )
            q = d.box(x + steps * cell + 1.1, y - cell, f"q{_sub(t)}", "attention", w=0.9, h=0.6)
            d.arrow(q, (x + t * cell + 0.08, q.y))
            n = 1 if with_cache else t
            d.note(q.right[0] + 0.15, q.y + 0.2, f"computes {n} k, v", ha="left")
            d.note(q.right[0] + 0.15, q.y - 0.2, f"attends over {t}", ha="left")
    total = steps * (steps + 1) // 2
    y = top - 0.55 - steps * row_h - 0.1
    terms = " + ".join(str(t) for t in range(1, steps + 1)) if steps <= 5 else f"1 + … + {steps}"
    d.text(x_with, y, f"total k, v computed: {steps}, one per token", ha="left")
    d.text(x_without, y, f"total k, v computed: {total} = {terms}", ha="left")
    d.note(x_with, y - 0.45, "memory: the cache holds t (k, v) per layer", ha="left")
    d.note(x_without, y - 0.45, "no cache: step t recomputes t (k, v) per layer", ha="left")
    d.legend(0.3, y - 1.1, [(cached, "read from the cache")])
    d.legend(x_with + 2.4, y - 1.1, [(new, "computed this step, appended")])
    d.legend(x_without + 2.4, y - 1.1, [(recomputed, "recomputed this step")])
    return d.figure


# --------------------------------------------------------------------------------------------
# Positions

_PAIR_COLORS = ["#2F6EA8", "#C0562B", "#4A8A3A", "#7A4E9C", "#A8861A", "#1F8A87", "#B0447A"]
_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _sub(i: int) -> str:
    return str(i).translate(_SUBSCRIPTS)


def rope_rotation(*, head_dim: int = 8, base: float = 10000.0, pairs: Sequence[int] = (0, 1)):
    """RoPE: each pair of q's dimensions rotates by m·θ_i at position m; how dims are paired.

    Top: the 2-D pair i of one query vector at positions m = 0..3, on a unit circle, for a
    fast pair (i = 0, θ_0 = 1 rad per position) and a slower one; the length never changes,
    only the angle. Bottom: which dimensions form pair i in the two layouts: rotate-half
    (i, i + head_dim/2), used here and by HF LLaMA, and interleaved (2i, 2i+1), RoFormer's.
    θ_i = base^(-2i / head_dim).
    """
    from matplotlib.patches import Arc, Circle

    head_dim = require_positive_int(head_dim, "head_dim")
    if head_dim % 2 or not 4 <= head_dim <= 12:
        raise ValueError(f"head_dim: expected an even int in 4..12, got {head_dim}")
    half = head_dim // 2
    pairs = [require_int(i, "pairs[i]", 0) for i in pairs]
    if len(pairs) != 2 or any(i >= half for i in pairs):
        raise ValueError(f"pairs: expected two pair indices in 0..{half - 1}, got {pairs}")
    thetas = [base ** (-2 * i / head_dim) for i in pairs]
    positions = 4
    m_colors = ["#BBBBBB", "#8A8A8A", "#555555", "#111111"]
    phi0 = math.radians(20)

    height = 8.6
    d = Diagram(16.4, height, unit=0.57, title="RoPE: rotate each pair of dimensions by m · θ_i")
    R = 1.8
    cy = height - 1.95 - R
    for k, (i, theta) in enumerate(zip(pairs, thetas, strict=True)):
        cx = 2.9 + k * 6.0
        color = _PAIR_COLORS[i % len(_PAIR_COLORS)]
        speed = "fast" if theta == max(thetas) else "slow"
        d.text(cx, height - 1.05, f"pair i = {i} ({speed})", color=color, weight="bold")
        d.text(cx, height - 1.5, f"θ{_sub(i)} = {theta:.3g} rad per position", color=color)
        d.ax.add_patch(Circle((cx, cy), R, fill=False, edgecolor=color, lw=1.2, alpha=0.6))
        d.path([(cx - R - 0.2, cy), (cx + R + 0.2, cy)], head=False, color="#CCCCCC", lw=0.8)
        d.path([(cx, cy - R - 0.2), (cx, cy + R + 0.2)], head=False, color="#CCCCCC", lw=0.8)
        for m in range(positions):
            a = phi0 + m * theta
            d.path(
                [(cx, cy), (cx + R * math.cos(a), cy + R * math.sin(a))], color=m_colors[m], lw=2
            )
        # The angle between positions: one step when it is wide, all three when it is narrow.
        steps = 1 if theta >= 0.5 else positions - 1
        r_arc = 0.55 * R if steps == 1 else R + 0.25
        a0, a1 = phi0, phi0 + steps * theta
        d.ax.add_patch(
            Arc(
                (cx, cy),
                2 * r_arc,
                2 * r_arc,
                theta1=math.degrees(a0),
                theta2=math.degrees(a1),
                color=color,
                lw=1.6,
            )
        )
        mid = (a0 + a1) / 2
        r_text = r_arc + 0.3
        label = f"θ{_sub(i)}" if steps == 1 else f"{steps}θ{_sub(i)} = {steps * theta:.2g} rad"
        d.text(
            cx + r_text * math.cos(mid),
            cy + r_text * math.sin(mid),
            label,
            color=color,
            weight="bold",
            ha="left" if steps > 1 else "center",
        )
        d.note(cx, cy - R - 0.45, f"(x{_sub(i)}, x{_sub(i + half)}) rotated by m · θ{_sub(i)}")
    lx = 13.3
    d.text(lx, cy + 1.3, "position m", ha="left", weight="bold")
    for m in range(positions):
        y = cy + 0.75 - 0.5 * m
        d.path([(lx, y), (lx + 0.7, y)], color=m_colors[m], lw=2.0)
        d.text(lx + 0.9, y, f"m = {m}", ha="left", size=_SMALL)
    d.note(lx, cy - 1.45, "same length,\nnew angle", ha="left")

    # Which dimensions form pair i, in the two layouts.
    cell = 0.5
    colors = [_PAIR_COLORS[i % len(_PAIR_COLORS)] for i in range(half)]
    layouts = [
        (
            "rotate-half: pairs (i, i + d/2)",
            "this course, HF LLaMA, SmolLM2",
            [colors[j % half] for j in range(head_dim)],
        ),
        (
            "interleaved: pairs (2i, 2i + 1)",
            "RoFormer, Meta's original LLaMA",
            [colors[j // 2] for j in range(head_dim)],
        ),
    ]
    for k, (name, who, row) in enumerate(layouts):
        x = 0.8 + k * 7.9
        y = 1.2
        d.text(x, y + 0.75, name, ha="left", weight="bold")
        d.note(x, y + 0.3, who, ha="left")
        labels = [[f"x{_sub(j)}" for j in range(head_dim)]]
        d.grid(
            x,
            y,
            [[_lighten(c, 0.55) for c in row]],
            cell=cell,
            labels=labels,
            edgecolor="white",
            lw=2,
        )
        d.note(x + head_dim * cell + 0.2, y - cell / 2, "colour = pair i", ha="left")
    return d.figure


# --------------------------------------------------------------------------------------------
# Data and training


def _merge_rows(merges) -> list[tuple[str, str, float | None]]:
    """(left, right, count or None) from what the course's BPE and ``tokenizers`` give."""
    import numbers

    if hasattr(merges, "merges"):  # a BPETokenizer
        merges = merges.merges
    if isinstance(merges, (str, bytes)) or not isinstance(merges, Sequence):
        raise TypeError(
            "merges: expected a BPETokenizer or a sequence of (left, right[, count]) pairs, "
            f"got {type(merges).__name__}"
        )
    rows = []
    for k, m in enumerate(merges):
        count = None
        if isinstance(m, str):  # the `tokenizers` format: "left right"
            m = m.split(" ")
        elif len(m) == 2 and isinstance(m[0], (tuple, list)):  # ((left, right), count)
            m, count = m[0], m[1]
        if len(m) == 3:
            *m, count = m
        if len(m) != 2 or not all(isinstance(t, str) and t for t in m):
            raise ValueError(f"merges[{k}]: expected (left, right[, count]) strings, got {m!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, numbers.Real)):
            raise TypeError(f"merges[{k}]: expected a number as count, got {count!r}")
        rows.append((m[0], m[1], count))
    if not rows:
        raise ValueError("merges: expected at least one merge, got none")
    return rows


_MERGE_COLORS = [
    "#F9C89B",
    "#A8D5A2",
    "#9CC3E8",
    "#E3B4E0",
    "#F5E08A",
    "#8ED3CF",
    "#F2A7A7",
    "#C7C1F0",
    "#D9C3A5",
    "#B8E08A",
    "#F7B6D2",
    "#A9D2F5",
]


def _count_text(count) -> str:
    if count is None:
        return ""
    if float(count).is_integer():
        return f"{int(count):,}"
    return f"{count:,.3g}"


def bpe_merges(merges, *, max_merges: int = 12, tree_token: str | None = None):
    """The first merges of a BPE vocabulary as a table, and how one token grew, as a tree.

    merges: a :class:`llmlab.tokenization.BPETokenizer` (its ``merges``), or a sequence of
    ``(left, right)`` pairs in rank order, optionally ``(left, right, count)`` or
    ``((left, right), count)``, or ``tokenizers``' ``"left right"`` strings.
    max_merges: how many of the first merges to show.
    tree_token: the token whose tree is drawn (one made by a shown merge); by default the one
        built from the most pieces, preferring tokens with letters.
    A token made by a merge has that merge's colour wherever it appears again, so a row shows
    which earlier merges it builds on. Tokens are shown as stored: byte-level BPE writes a
    space as Ġ and a newline as Ċ; a literal space shows as ␣.
    """
    rows = _merge_rows(merges)
    max_merges = require_positive_int(max_merges, "max_merges")
    shown, hidden = rows[:max_merges], len(rows) - max_merges
    has_counts = any(c is not None for _, _, c in shown)

    creator: dict[str, int] = {}
    for rank, (left, right, _) in enumerate(shown):
        creator.setdefault(left + right, rank)

    def color(token, before):
        rank = creator.get(token)
        if rank is None or rank >= before:
            return KIND_COLORS["io"][0]
        return _MERGE_COLORS[rank % len(_MERGE_COLORS)]

    # The tree: the shown token with the most pieces (at most 8), built from earlier merges.
    def pieces(token, before):
        rank = creator.get(token)
        if rank is None or rank >= before:
            return [token]
        left, right, _ = shown[rank]
        return pieces(left, rank) + pieces(right, rank)

    made = [left + right for left, right, _ in shown]
    if tree_token is None:
        root = max(
            made,
            key=lambda t: (
                len(pieces(t, len(shown))) <= 8,
                any(c.isalpha() and c not in "ĠĊ" for c in t),
                len(pieces(t, len(shown))),
            ),
        )
    elif tree_token in made:
        root = tree_token
    else:
        raise ValueError(
            f"tree_token: expected a token made by one of the {len(shown)} merges shown, "
            f"got {tree_token!r}"
        )
    leaves = pieces(root, len(shown))

    def depth(token, before):
        rank = creator.get(token)
        if rank is None or rank >= before:
            return 0
        left, right, _ = shown[rank]
        return 1 + max(depth(left, rank), depth(right, rank))

    # Lay out at 0.55 inch per unit; a figure wider than 9.8 inches is laid out again smaller.
    unit = 0.55
    for _ in range(2):
        col_l = max(1.0, *(_token_box_width(r[0], unit) for r in shown))
        col_r = max(1.0, *(_token_box_width(r[1], unit) for r in shown))
        col_m = max(1.4, *(_token_box_width(r[0] + r[1], unit) for r in shown))
        x_rank = 0.5
        xl = x_rank + 1.1 + col_l / 2
        xr = xl + col_l / 2 + 0.7 + col_r / 2
        xm = xr + col_r / 2 + 0.8 + col_m / 2
        x_count = xm + col_m / 2 + 0.4
        tree_x0 = x_count + (1.8 if has_counts else 0.2) + 0.6
        leaf_gap = 0.35
        leaf_ws = [_token_box_width(t, unit) for t in leaves]
        tree_w = sum(leaf_ws) + leaf_gap * (len(leaves) - 1)
        panel_w = max(tree_w, 4.5)
        width = tree_x0 + panel_w + 0.5
        if width * unit <= 9.8:
            break
        unit = 9.8 / width
    row_h = 0.62
    n_rows = len(shown) + (1 if hidden > 0 else 0)
    level_h = 0.95
    tree_h = 1.3 + 1.05 + depth(root, len(shown)) * level_h + 0.6
    height = max(1.3 + n_rows * row_h + 0.55, tree_h)
    d = Diagram(width, height, unit=unit, title="BPE merges: how tokens grow")
    tree_top = height - 1.3
    y_leaf = tree_top - 1.05 - depth(root, len(shown)) * level_h

    y = height - 1.3
    d.text(x_rank, y, "rank", ha="left", weight="bold", size=_SMALL)
    d.text((xl + xr) / 2, y, "pair merged", weight="bold", size=_SMALL)
    d.text(xm, y, "new token", weight="bold", size=_SMALL)
    if has_counts:
        d.text(x_count, y, "count", ha="left", weight="bold", size=_SMALL)
    for rank, (left, right, count) in enumerate(shown):
        y = height - 1.3 - (rank + 1) * row_h
        d.text(x_rank, y, f"#{rank}", ha="left", color=_MUTED)
        for x, token, w in ((xl, left, col_l), (xr, right, col_r)):
            _token_box(d, x, y, token, color(token, rank), w)
        d.text((xl + col_l / 2 + xr - col_r / 2) / 2, y, "+")
        d.text((xr + col_r / 2 + xm - col_m / 2) / 2, y, "→")
        _token_box(d, xm, y, left + right, _MERGE_COLORS[rank % len(_MERGE_COLORS)], col_m)
        if count is not None:
            d.text(x_count, y, _count_text(count), ha="left")
    if hidden > 0:
        d.note(x_rank, height - 1.3 - n_rows * row_h, f"… and {hidden:,} more merges", ha="left")

    # The tree of `root`, leaves at the bottom, each merge one level up.
    xs, x = [], tree_x0 + (panel_w - tree_w) / 2
    for w in leaf_ws:
        xs.append(x + w / 2)
        x += w + leaf_gap

    def place(token, before, lo):
        """Draw the subtree of ``token`` whose leaves start at index ``lo``; return (x, y, n)."""
        rank = creator.get(token)
        if rank is None or rank >= before:
            _token_box(d, xs[lo], y_leaf, token, color(token, before), leaf_ws[lo])
            return xs[lo], y_leaf, 1
        left, right, _ = shown[rank]
        xa, ya, na = place(left, rank, lo)
        xb, yb, nb = place(right, rank, lo + na)
        x, y = (xa + xb) / 2, max(ya, yb) + level_h
        w = _token_box_width(token, unit)
        _token_box(d, x, y, token, _MERGE_COLORS[rank % len(_MERGE_COLORS)], w)
        for xc, yc in ((xa, ya), (xb, yb)):
            d.path([(xc, yc + 0.25), (x, y - 0.25)], color="#777777", lw=1.2)
        d.note(x + w / 2 + 0.1, y, f"#{rank}", ha="left")
        return x, y, na + nb

    place(root, len(shown), 0)
    d.text(
        tree_x0 + panel_w / 2,
        tree_top,
        f"how {_display_token(root)!r} was built",
        weight="bold",
        size=_SMALL,
    )
    marks = [
        f"{mark} = {meaning}"
        for mark, meaning in (("Ġ", "a space"), ("Ċ", "a newline"))
        if any(mark in left + right for left, right, _ in shown)
    ]
    if marks:
        d.note(tree_x0 + panel_w / 2, tree_top - 0.45, ",  ".join(marks) + " (byte-level BPE)")
    return d.figure


def _token_box_width(token: str, unit: float) -> float:
    """The width in grid units of a box that fits ``token`` (monospace, 10 pt)."""
    return max(0.8, _text_width(_display_token(token), _FONT, unit, family="monospace") + 0.5)


def _token_box(d: Diagram, x: float, y: float, token: str, fill: str, w: float) -> Box:
    """A token in a box: monospace, spaces made visible."""
    return d.box(x, y, _display_token(token), "io", w=w, h=0.48, fill=fill, family="monospace")


def _stage(item, k: int) -> tuple[str, str]:
    if isinstance(item, str):
        return item, ""
    if not isinstance(item, Sequence) or len(item) != 2 or not isinstance(item[0], str):
        raise ValueError(f"stages[{k}]: expected a name or (name, count), got {item!r}")
    name, count = item
    if count is None:
        return name, ""
    if isinstance(count, str):
        return name, count
    return name, _count_text(count)


def data_pipeline(stages, *, title: str = "From raw text to training tokens"):
    """A left-to-right flow of processing stages with what is left after each one.

    stages: a sequence of ``(name, count)`` (or names alone), in order; a count is a str
    shown as given ("11,200 docs") or a number (shown with thousands separators), and is
    what the notebook measured. More than 6 stages wrap onto a second row.
    """
    if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
        raise ValueError(f"stages: expected a non-empty sequence of (name, count), got {stages!r}")
    items = [_stage(item, k) for k, item in enumerate(stages)]
    if len(items) > 12:
        raise ValueError(
            f"stages: expected at most 12 stages (a readable figure), got {len(items)}"
        )
    per_row = min(len(items), 6)
    n_rows = -(-len(items) // per_row)
    box_w, gap = 2.6, 0.75
    width = per_row * box_w + (per_row - 1) * gap + 0.9
    unit = min(0.55, 9.8 / width)

    def wrapped(name):
        """``name`` on as few lines as fit the box (a word longer than the box is kept whole)."""
        label = name
        for chars in range(len(name), 3, -1):
            label = "\n".join(textwrap.wrap(name, chars, break_long_words=False))
            if _text_width(label, _FONT, unit) <= box_w - 0.4:
                break
        return label

    labels = [wrapped(name) for name, _ in items]
    box_h = 0.5 + 0.3 * max(label.count("\n") + 1 for label in labels)
    row_h = box_h + 1.5
    height = 1.1 + box_h + 0.75 + (n_rows - 1) * row_h
    d = Diagram(width, height, unit=unit, title=title)
    prev = None
    for k, ((_, count), label) in enumerate(zip(items, labels, strict=True)):
        r, c = divmod(k, per_row)
        x = 0.4 + box_w / 2 + c * (box_w + gap)
        y = height - 1.1 - box_h / 2 - r * row_h
        kind = "data" if k in (0, len(items) - 1) else "op"
        b = d.box(x, y, label, kind, w=box_w, h=box_h)
        if count:
            d.text(x, y - box_h / 2 - 0.35, count, weight="bold", size=_SMALL)
        if prev is not None:
            if prev.y == b.y:
                d.arrow(prev, b)
            else:  # around the end of the row, under its counts, to the next row's start
                xe, ym = prev.right[0] + 0.3, prev.bottom[1] - 0.8
                d.path([prev.right, (xe, prev.y), (xe, ym), (b.x, ym), b.top])
        prev = b
    return d.figure


def training_loop(*, eval_every: int | str = "k"):
    """One training step as a cycle, and what happens every few steps.

    batch -> forward -> loss -> backward -> clip the gradient norm -> optimizer step (at the
    learning rate the schedule gives for this step) -> zero the gradients -> next batch; every
    ``eval_every`` steps (an int, or a name such as "k"), evaluate on held-out data and save a
    checkpoint.
    """
    if not isinstance(eval_every, str):
        eval_every = require_positive_int(eval_every, "eval_every")
    box_w, box_h, gap = 3.4, 0.95, 0.9
    xs = [0.4 + box_w / 2 + c * (box_w + gap) for c in range(4)]
    width = xs[-1] + box_w / 2 + 0.4
    height = 8.0
    d = Diagram(width, height, unit=min(0.55, 9.8 / width), title="The training loop")
    y_top, y_bot = height - 1.75, height - 5.2

    def box(c, y, label, kind="op", **kwargs):
        kwargs.setdefault("w", box_w)
        return d.box(xs[c], y, label, kind, h=box_h, **kwargs)

    batch = box(0, y_top, "next batch\n(input ids, targets)", "data")
    forward = box(1, y_top, "forward\nlogits = model(x)", "ffn")
    loss = box(2, y_top, "loss\ncross-entropy", "attention")
    backward = box(3, y_top, "backward\nloss.backward()", "ffn")
    clip = box(3, y_bot, "clip gradients\nglobal norm ≤ 1.0", "norm")
    step = box(2, y_bot, "optimizer step\nAdamW: p -= lr · update", "op")
    zero = box(1, y_bot, "zero grad\nclear .grad", "op")
    for a, b in ((batch, forward), (forward, loss), (loss, backward), (backward, clip)):
        d.arrow(a, b)
    d.arrow(clip, step)
    d.arrow(step, zero)
    d.note(forward.x, forward.y - 0.8, "(batch, seq, vocab)")
    d.note(loss.x, loss.y - 0.8, "one number")
    d.note(backward.x - 0.15, (y_top + y_bot) / 2, "a gradient\nper parameter", ha="right")
    # Back to the top: the next step.
    x_back = batch.x
    d.path([zero.left, (x_back, zero.y), batch.bottom], lw=1.6)
    d.text(x_back + 0.15, (y_top + y_bot) / 2, "step += 1", ha="left", weight="bold")
    # The schedule sets this step's learning rate.
    sched = d.box(
        step.x, (y_top + y_bot) / 2 - 0.1, "LR schedule\nwarmup + cosine", "cache", w=2.8, h=box_h
    )
    d.arrow(sched, step, label="lr(step)")
    # Every few steps, off the main cycle.
    ev = box(
        1,
        y_bot - 1.95,
        f"every {eval_every} steps: eval on held-out\ndata, save a checkpoint",
        "io",
        dashed=True,
        w=None,
    )
    d.arrow(zero, ev, dashed=True)
    return d.figure


def sparse_attention_pattern(seq: int = 16, window: int = 4, n_global: int = 2):
    """The full causal mask next to a sliding-window mask with global tokens.

    Rows are queries i, columns keys j. Causal: i attends to every j <= i (seq(seq+1)/2
    scores). Sliding window: i attends to the ``window`` most recent keys (itself included,
    i - window < j <= i) and to the first ``n_global`` tokens, which every later query sees
    (global tokens, or attention sinks): about seq·(window + n_global) scores.
    """
    seq = require_positive_int(seq, "seq")
    window = require_positive_int(window, "window")
    n_global = require_int(n_global, "n_global", 0)
    if not 4 <= seq <= 32:
        raise ValueError(f"seq: expected 4..32 (a readable figure), got {seq}")
    if window > seq or n_global > seq:
        raise ValueError(f"window, n_global: expected <= seq={seq}, got {window}, {n_global}")
    on, glob, off = "#2F6EA8", "#E07B39", "#F2F2F2"
    cell = 6.0 / seq
    side = seq * cell
    gap = 2.0
    width = 1.5 + side + gap + side + 0.4
    height = side + 3.9
    d = Diagram(width, height, unit=min(0.58, 9.8 / width), title="Causal vs sparse attention")
    top = height - 1.75
    panels = [
        ("full causal", lambda i, j: on if j <= i else off),
        (
            f"sliding window ({window}) + {n_global} global",
            lambda i, j: off if j > i else on if i - j < window else glob if j < n_global else off,
        ),
    ]
    tick = max(1, seq // 4)
    full = seq * (seq + 1) // 2
    for k, (name, color) in enumerate(panels):
        x = 1.5 + k * (side + gap)
        colors = [[color(i, j) for j in range(seq)] for i in range(seq)]
        x0, y0, x1, y1 = d.grid(x, top, colors, cell=cell, edgecolor="white", lw=0.6)
        d.frame(x0, y0, x1, y1, color="#999999", lw=0.8)
        for p in range(0, seq, tick):
            d.text(x0 + (p + 0.5) * cell, y0 - 0.22, str(p), size=_SMALL, color=_MUTED)
            d.text(x0 - 0.12, top - (p + 0.5) * cell, str(p), size=_SMALL, color=_MUTED, ha="right")
        n = sum(c != off for row in colors for c in row)
        d.text((x0 + x1) / 2, top + 0.55, name, weight="bold")
        d.note((x0 + x1) / 2, top + 0.15, "key position j →")
        d.note(x0 - 0.6, (y0 + y1) / 2, "← query position i", rotation=90, ha="right")
        d.text((x0 + x1) / 2, y0 - 0.7, f"{n} scores ({n / full:.0%} of causal)", size=_SMALL)
    y_legend = top - side - 1.3
    d.legend(1.5, y_legend, [(on, "attends: causal, within the window")])
    if n_global:
        d.legend(1.5 + side + gap, y_legend, [(glob, "attends: a global token, seen by all")])
    return d.figure


# --------------------------------------------------------------------------------------------
# Post-training


def lora_layer(d_in: int = 576, d_out: int = 576, r: int = 8, alpha: float = 16):
    """A LoRA layer: the frozen weight W beside a trainable low-rank path B A, scaled by alpha/r.

    y = W x + (alpha / r) · B (A x), A: (r, d_in) starts random, B: (d_out, r) starts at zero,
    so the layer starts equal to W. The notes count what trains, r (d_in + d_out), against
    W's d_in · d_out, and the merged weight W' = W + (alpha / r) B A that serving uses.
    """
    d_in = require_positive_int(d_in, "d_in")
    d_out = require_positive_int(d_out, "d_out")
    r = require_positive_int(r, "r")
    if not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha: expected a positive number, got {alpha!r}")
    width, height = 15.0, 8.6
    d = Diagram(width, height, unit=0.62, title="LoRA: a frozen W and a trainable low-rank update")
    x_in = d.box(1.5, 4.0, f"x\n({d_in},)", "io", w=1.9, h=0.95)
    w = d.box(6.0, 6.2, f"W  ({d_out} × {d_in})\nfrozen", "norm", w=3.8, h=1.1)
    a = d.box(4.9, 2.0, f"A  ({r} × {d_in})\nrandom init", "ffn", w=2.9, h=1.1)
    b = d.box(8.6, 2.0, f"B  ({d_out} × {r})\nzero init", "ffn", w=2.9, h=1.1)
    plus = d.box(11.3, 4.0, "+", "add", w=0.8, h=0.8, size=14)
    y = d.box(13.6, 4.0, f"y\n({d_out},)", "io", w=1.9, h=0.95)
    d.arrow(x_in, w, elbow="vh")
    d.arrow(x_in, a, elbow="vh")
    d.arrow(a, b, label=f"({r},)")
    d.arrow(w, plus, elbow="hv", label="W x")
    d.arrow(b, plus, elbow="hv", label=f"× α/r = {alpha:g}/{r}")
    d.arrow(plus, y)
    lora = r * (d_in + d_out)
    d.note(
        6.0,
        0.65,
        f"trains r (d_in + d_out) = {lora:,} numbers; W has {d_in * d_out:,} "
        f"({lora / (d_in * d_out):.1%})",
    )
    d.note(6.0, 7.3, "after training: merge W' = W + (α/r) B A, no extra cost at inference")
    d.legend(12.6, 2.4, [(KIND_COLORS["norm"][0], "frozen"), (KIND_COLORS["ffn"][0], "trained")])
    return d.figure
