"""Coverage explorer: widgets pick the selector, its ablation options (``pooling=lse``), block
size, top_k, head or group, length and data pattern; the selection map, the recall histogram
and the summary numbers update in place (Plotly ``FigureWidget`` traces are replaced, the
output is not re-rendered).

It stays interactive at long lengths by measuring ``rows`` query rows spread evenly over
the sequence (exact normalisers, as ``coverage(rows=...)``): the true block mass of those
rows is computed once per (data, block size), a selector's scores once per (data,
selector, block size), and a new ``top_k`` or head only re-ranks cached scores. So the map
is drawn from those rows too: its cells are the share of each query block's measured rows
that selected each key block.

    from msa_lab.viz.explorer import CoverageExplorer
    CoverageExplorer(seq_lens=(4096, 16384))      # the last line of a notebook cell
"""

from __future__ import annotations

import functools
import html
import time

import plotly.graph_objects as go
import torch

from ..coverage import CoverageReport, evenly_spaced_rows, oracle_blocks
from ..data import PATTERNS, structured_qkv
from ..reference import block_mass
from ..selection import num_blocks
from ..select import select_top_blocks
from ..select.registry import SELECTORS, selectors
from ..validation import check_choice, check_positive_int
from .figures import add_future_layer, future_cells
from .theme import TEMPLATE, method_color

#: The learned and training-free selectors first, then the controls.
METHODS = tuple(s.name for s in sorted(selectors(), key=lambda s: not s.timed))
#: Heat-map cells at most per axis: longer selections are aggregated into coarser bins.
MAP_CELLS = 256


def parse_options(text: str, selector, *, block_size: int, top_k: int) -> tuple:
    """``"pooling=lse, sink_blocks=1"`` as ``selector.check_options`` pairs (checked at
    ``block_size`` and ``top_k``), each value read as its default's type (an int,
    ``true``/``false``, or a string); empty: the defaults."""
    given = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep or not name:
            raise ValueError(f"options: write name=value pairs separated by commas, got {item!r}")
        default = selector.options.get(name)
        if isinstance(default, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"options.{name} must be true or false, got {value!r}")
            given[name] = value.lower() == "true"
        elif isinstance(default, int):
            try:
                given[name] = int(value)
            except ValueError:
                raise ValueError(f"options.{name} must be an int, got {value!r}") from None
        else:  # a string option, or a name check_options refuses with the selector's own list
            given[name] = value
    return selector.check_options(given, "options", block_size=block_size, top_k=top_k)


def rows_block_map(ids: torch.Tensor, positions: torch.Tensor, block_size: int, num_key_blocks: int,
                   cells: int = MAP_CELLS) -> torch.Tensor:
    """``[query bins, key bins]`` share of the rows of each query bin that selected each key
    bin, for one head's ids ``[C, K]`` at ``positions [C]``; bins group whole blocks so that
    neither axis has more than ``cells`` bins (a 1M-token map is 256 x 256 at most)."""
    per_bin = -(-num_key_blocks // cells)
    bins = -(-num_key_blocks // per_bin)
    valid = ids >= 0
    qbin = (positions.long() // block_size // per_bin).view(-1, 1).expand_as(ids)
    kbin = torch.where(valid, ids.long(), torch.zeros_like(ids, dtype=torch.long)) // per_bin
    # A row counts once per key bin, however many of its blocks fall in that bin.
    hit = torch.zeros(ids.shape[0], bins, dtype=torch.bool, device=ids.device)
    hit[torch.arange(ids.shape[0], device=ids.device).view(-1, 1).expand_as(ids)[valid], kbin[valid]] = True
    counts = torch.zeros(bins, bins, device=ids.device).index_add_(0, qbin[:, 0], hit.float())
    rows = torch.bincount(qbin[:, 0], minlength=bins).float().clamp_min(1)
    return (counts / rows.view(-1, 1)).cpu(), per_bin


class CoverageExplorer:
    """An ipywidgets explorer of selection coverage on generated data (``msa_lab.data``).

    ``seq_lens``, ``patterns`` and ``block_sizes`` are the choices offered; ``rows`` the
    query rows measured per setting. MSA uses the group-mean query and the group's keys as
    its index branch (``index_from_qk``), a stand-in for a trained indexer."""

    def __init__(self, *, seq_lens=(4096, 16384), patterns=("mixed", *PATTERNS), block_sizes=(64, 128, 256, 512),
                 num_heads: int = 8, num_kv_heads: int = 4, head_dim: int = 64, rows: int = 512,
                 top_k: int = 8, device="cpu", seed: int = 0):
        import ipywidgets as w

        self.num_heads = check_positive_int(num_heads, "num_heads")
        self.num_kv_heads = check_positive_int(num_kv_heads, "num_kv_heads")
        self.head_dim = check_positive_int(head_dim, "head_dim")
        self.rows = check_positive_int(rows, "rows")
        for n in seq_lens:
            check_positive_int(n, "seq_lens[i]")
        for bs in block_sizes:
            check_positive_int(bs, "block_sizes[i]")
        for p in patterns:
            check_choice(p, "patterns[i]", ("mixed", *PATTERNS))
        self.device, self.seed = device, seed
        style = dict(description_width="80px")
        self.method = w.Dropdown(options=METHODS, value="msa", description="method", style=style)
        self.block_size = w.Dropdown(options=list(block_sizes), value=128 if 128 in block_sizes else block_sizes[0],
                                     description="block", style=style)
        self.top_k = w.IntSlider(value=top_k, min=1, max=32, description="top_k", style=style,
                                 continuous_update=False)
        self.head = w.IntSlider(value=0, min=0, max=self.num_heads - 1, description="head", style=style,
                                continuous_update=False)
        self.seq_len = w.Dropdown(options=list(seq_lens), value=seq_lens[0], description="tokens", style=style)
        self.pattern = w.Dropdown(options=list(patterns), value=patterns[0], description="data", style=style)
        # The selector's ablation parameters (its registry row's options), e.g. MSA's pooling.
        self.options = w.Text(value="", placeholder="pooling=lse, sink_blocks=1", description="options",
                              style=style, continuous_update=False)
        self.summary = w.HTML()
        self.map = go.FigureWidget(layout=dict(template=TEMPLATE, height=460, width=470,
                                               margin=dict(l=60, r=10, t=40, b=80)))
        self.map.add_heatmap(z=[[0]], colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="share"),
                             hovertemplate="query bin %{y}<br>key bin %{x}<br>share %{z:.2f}<extra></extra>")
        self.map.add_scatter(x=[], y=[], mode="markers", name="oracle miss",
                             marker=dict(symbol="x", color="#D55E00", size=6))
        add_future_layer(self.map, 1, 1)  # traces 2 and 3: sized to the bins by update()
        self.map.update_layout(xaxis_title="key block", yaxis_title="query block", yaxis_autorange="reversed",
                               legend=dict(orientation="h", x=0, y=-0.18, yanchor="top"),
                               xaxis_showgrid=False, yaxis_showgrid=False)
        self.hist = go.FigureWidget(layout=dict(template=TEMPLATE, height=430, width=430,
                                                margin=dict(l=60, r=10, t=40, b=50)))
        # Both traces named (and shown in the legend) from the start; update() names the first
        # after the selector.
        self.hist.add_histogram(x=[], xbins=dict(start=0, end=1.0001, size=0.02), name=SELECTORS["msa"].label,
                                marker_color=method_color("msa"), opacity=0.8, showlegend=True)
        self.hist.add_histogram(x=[], xbins=dict(start=0, end=1.0001, size=0.02), name="oracle (best possible)",
                                marker_color=method_color("oracle"), opacity=0.45, showlegend=True)
        self.hist.update_layout(barmode="overlay", xaxis_title="recall of a row", yaxis_title="rows",
                                xaxis_range=[0, 1.01], legend=dict(x=0.02, y=0.98))
        controls = [self.method, self.block_size, self.top_k, self.head, self.seq_len, self.pattern, self.options]
        for c in controls:
            c.observe(self._changed, names="value")
        self.widget = w.VBox([w.HBox([w.VBox(controls[:4]), w.VBox(controls[4:])]),
                              w.HBox([self.map, self.hist]), self.summary])
        self.last_update_s = None
        self.update()

    # Cached computations: each depends only on what its arguments name.
    @functools.lru_cache(maxsize=8)
    def _data(self, pattern: str, seq_len: int):
        data = structured_qkv(seq_len=seq_len, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                              head_dim=self.head_dim, patterns=pattern, seed=self.seed, device=self.device)
        return data, evenly_spaced_rows(seq_len, self.rows, self.device)

    @functools.lru_cache(maxsize=16)
    def _mass(self, pattern: str, seq_len: int, block_size: int) -> torch.Tensor:
        data, pos = self._data(pattern, seq_len)
        return block_mass(data.q, data.k, pos, block_size=block_size, scale=self.head_dim ** -0.5)

    @functools.lru_cache(maxsize=32)
    def _scores(self, method: str, pattern: str, seq_len: int, block_size: int):
        """Block scores ``[B, Hs, R, nb]`` of the measured rows alone (a selector's ``row_scores``)."""
        data, pos = self._data(pattern, seq_len)
        return SELECTORS[method].row_scores(data.q, data.k, None, pos, block_size)

    def _ids(self, method, pattern, seq_len, block_size, top_k, options=()):
        data, pos = self._data(pattern, seq_len)
        if method == "oracle" and not options:  # the most true mass per group, as coverage()'s oracle
            return oracle_blocks(self._mass(pattern, seq_len, block_size), pos, block_size=block_size,
                                 top_k=top_k, per="group", group_size=self.num_heads // self.num_kv_heads)
        selector = SELECTORS[method]
        if selector.row_scores is not None and not options:
            return select_top_blocks(self._scores(method, pattern, seq_len, block_size), pos,
                                     block_size=block_size, top_k=top_k)
        # A selector that ranks no scores (the window, random blocks), or one with ablation
        # options (its cached scores are the defaults'): its whole selection, at the rows.
        selection = selector.select(data.q, data.k, block_size=block_size, top_k=top_k, seed=self.seed,
                                    **dict(options))
        return selection.indices[:, :, pos]

    def selector_options(self) -> tuple:
        """The options box as the selector's checked ``(name, value)`` pairs (defaults dropped)."""
        return parse_options(self.options.value, SELECTORS[self.method.value], block_size=self.block_size.value,
                             top_k=self.top_k.value)

    def report(self) -> CoverageReport:
        """The coverage of the current setting (on the measured rows)."""
        return self._measure()[0]

    def _measure(self):
        method, bs, k = self.method.value, self.block_size.value, self.top_k.value
        pattern, n = self.pattern.value, self.seq_len.value
        _, pos = self._data(pattern, n)
        mass = self._mass(pattern, n, bs)
        options = self.selector_options()
        ids = self._ids(method, pattern, n, bs, k, options)
        per = SELECTORS[method].default_per()
        G = self.num_heads // self.num_kv_heads
        oracle = oracle_blocks(mass, pos, block_size=bs, top_k=k, per=per, group_size=G)
        report = CoverageReport.from_block_mass(mass, ids, pos, per=per, group_size=G, block_size=bs, top_k=k,
                                                oracle_ids=oracle)
        return report, ids, oracle, options

    def update(self) -> None:
        start = time.perf_counter()
        try:
            report, ids, oracle, options = self._measure()
        except ValueError as err:  # options the selector does not take: say so, keep the last view
            self.summary.value = f"<span style='color:#D55E00'>{html.escape(str(err), quote=False)}</span>"
            return
        G = report.group_size
        head = self.head.value
        row = head if report.per == "head" else head // G
        nb = num_blocks(self.seq_len.value, report.block_size)
        share, per_bin = rows_block_map(ids[0, row], report.positions, report.block_size, nb)
        oracle_share, _ = rows_block_map(oracle[0, row], report.positions, report.block_size, nb)
        qb, kb = torch.nonzero((oracle_share > 0) & (share == 0), as_tuple=True)
        unit = "block" if per_bin == 1 else f"bin of {per_bin} blocks"
        name = self.method.value
        options = ", ".join(f"{k}={v}" for k, v in options)
        shown = f"{name} ({options})" if options else name
        with self.map.batch_update():
            self.map.data[0].z = share.tolist()
            self.map.data[1].x, self.map.data[1].y = kb.tolist(), qb.tolist()
            self.map.data[2].z = future_cells(*share.shape)
            self.map.layout.title = (f"{shown}: {'head' if report.per == 'head' else 'group'} {row}, "
                                     f"x = oracle miss")
            self.map.layout.xaxis.title, self.map.layout.yaxis.title = f"key {unit}", f"query {unit}"
        recall = report.recall[0, head]
        with self.hist.batch_update():
            self.hist.data[0].x = recall.tolist()
            self.hist.data[0].name = SELECTORS[name].label + (f" ({options})" if options else "")
            self.hist.data[0].marker.color = method_color(name)
            self.hist.data[1].x = report.oracle_recall[0, head].tolist()
            self.hist.layout.title = f"Recall of head {head}'s rows"
        s = report.summary()
        self.last_update_s = time.perf_counter() - start
        self.summary.value = (
            f"<b>{html.escape(shown)}</b>, block {report.block_size}, top_k {report.top_k}, "
            f"{self.seq_len.value:,} tokens ({self.pattern.value}), {report.positions.numel():,} query rows "
            f"x {self.num_heads} heads measured: "
            f"recall mean <b>{s['recall']['mean']:.3f}</b> (p5 {s['recall']['p5']:.3f}, "
            f"{100 * s['recall']['share_below_0.9']:.1f} % of rows under 0.9), "
            f"oracle {s['oracle_recall']['mean']:.3f}, vs oracle {s['relative_recall']['mean']:.3f}, "
            f"overlap {s['overlap']['mean']:.3f}; the paper's block recall {s['block_recall']['mean']:.3f}, "
            f"score recall {s['score_recall']['mean']:.3f}; head {head}: {float(recall.mean()):.3f}. "
            f"<span style='color:#888'>({1000 * self.last_update_s:.0f} ms)</span>")

    def _changed(self, _change) -> None:
        self.update()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
