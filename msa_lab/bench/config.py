"""Sweep configs: a YAML file (or a dict) describing a grid of benchmark points.

Everything is checked before any work starts: an unknown field (with the closest known
name suggested), an unknown method, a backend the method or mode cannot use, an
impossible shape (heads not divisible by KV heads) or a device that is not there raises
``ValueError`` naming the field. ``docs/sweeps.md`` documents every field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backends import BLOCK_SPARSE, DECODE
from ..config_checks import check_known_fields, field_bool, field_choice, field_int, field_list
from ..select.registry import SELECTORS, selectors

#: Backends per (mode, method). "sdpa_cudnn" / "sdpa_flash" pin PyTorch SDPA's backend;
#: "sdpa" lets PyTorch choose. Sparse attention backends are those of block_sparse_attention.
SPARSE_BACKENDS = BLOCK_SPARSE.backends
DENSE_BACKENDS = ("sdpa_cudnn", "sdpa_flash", "sdpa", "triton", "reference")
#: Every registered selector in prefill (the timed ones time their selection; the others,
#: controls and benchmark workloads such as "structured" and "coherent", are given selections);
#: MSA's fused decode; coverage of every selector of real inputs against full attention (the
#: backend computes the outputs whose relative error is reported).
BACKENDS = {
    "prefill": {"full": DENSE_BACKENDS, **{s.name: SPARSE_BACKENDS for s in selectors(synthetic=None)}},
    "decode": {"full": DENSE_BACKENDS, "msa": DECODE.backends},
    "coverage": {s.name: ("reference",) for s in selectors()},
}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GRID_FIELDS = ("seq_len", "batch", "num_heads", "num_kv_heads", "head_dim", "index_dim",
               "block_size", "top_k", "dtype", "pattern", "rows")
#: Coverage-only grid fields: the generated data's pattern and the query rows measured.
COVERAGE_FIELDS = ("pattern", "rows")
COVERAGE_DEFAULTS = {"pattern": "mixed", "rows": 1024}
TOP_FIELDS = ("name", "description", "mode", "device", "repeats", "max_seconds_per_point",
              "seed", "cuda_graph", "grid", "methods")
METHOD_FIELDS = ("method", "backend", "selection_backend", "per", "stages", "max_seq_len", "cuda_graph", "grid",
                 "options")
SELECTION_BACKENDS = ("auto", "triton", "reference")


@dataclass(frozen=True)
class Point:
    """One benchmark point: a method entry at one grid cell."""

    mode: str
    method: str
    backend: str
    selection_backend: str
    per: str
    stages: bool
    max_seq_len: int | None
    seq_len: int
    batch: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    index_dim: int | None
    block_size: int | None
    top_k: int | None
    dtype: str
    pattern: str | None = None
    rows: int | None = None
    cuda_graph: bool = False
    #: The selector's ablation parameters (``Selector.options``) that differ from its defaults,
    #: as sorted ``(name, value)`` pairs.
    options: tuple = ()

    @property
    def params(self) -> dict:
        """What identifies the point (its row columns and the resume key). A decode point not
        replayed from a CUDA graph is timed per synchronised call, a measurement of its own:
        ``per_call`` marks it, so graph-replayed points keep the ids of the sweeps before it."""
        fields = GRID_FIELDS if self.mode == "coverage" else tuple(f for f in GRID_FIELDS if f not in COVERAGE_FIELDS)
        timing = ("per_call",) if self.per_call else ()
        keys = ("mode", "method", "backend", "selection_backend", "per", *fields, *timing)
        # Options join the id only when given, so every point without them keeps its id.
        extra = {"options": self.options_text} if self.options else {}
        return {**{k: getattr(self, k) for k in keys}, **extra}

    @property
    def options_text(self) -> str:
        """The options as a row shows them, e.g. ``"pooling=lse,sink_blocks=1"``."""
        return ",".join(f"{k}={v}" for k, v in self.options)

    @property
    def per_call(self) -> bool:
        return self.mode == "decode" and not self.cuda_graph

    @property
    def point_id(self) -> str:
        return hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def sparse(self) -> bool:
        return self.method != "full"

    def describe(self) -> str:
        options = f" {self.options_text}" if self.options else ""
        if self.method in SELECTORS and SELECTORS[self.method].per == "either":
            options += f" per={self.per}"
        return (f"{self.mode} {self.method}{options}/{self.backend} N={self.seq_len} B={self.batch} "
                f"H={self.num_heads}/{self.num_kv_heads} D={self.head_dim} bs={self.block_size} "
                f"k={self.top_k} {self.dtype}")


@dataclass(frozen=True)
class SweepConfig:
    name: str
    mode: str
    device: str
    points: tuple[Point, ...]
    description: str = ""
    repeats: int = 20
    max_seconds_per_point: float = 120.0
    seed: int = 0
    cuda_graph: bool = False
    source: dict = field(default_factory=dict, compare=False, repr=False)


def _check_grid(grid, where: str) -> dict:
    if not isinstance(grid, dict):
        raise ValueError(f"{where} must be a mapping of grid fields to values or lists")
    check_known_fields(grid, GRID_FIELDS, where)
    out = {}
    for key, value in grid.items():
        values = field_list(value, f"{where}.{key}")
        if key == "dtype":
            out[key] = [field_choice(v, f"{where}.dtype", tuple(DTYPES)) for v in values]
        elif key == "pattern":
            from ..data import PATTERNS

            out[key] = [field_choice(v, f"{where}.pattern", ("mixed", *PATTERNS)) for v in values]
        else:
            out[key] = [field_int(v, f"{where}.{key}") for v in values]
    return out


def _check_cell(cell: dict, where: str) -> None:
    """Values no point can have, refused before any work: a block longer than the sequence,
    more blocks to keep than there are, more query rows than tokens."""
    if cell["num_heads"] % cell["num_kv_heads"]:
        raise ValueError(f"{where}: num_heads {cell['num_heads']} is not a multiple of "
                         f"num_kv_heads {cell['num_kv_heads']} (GQA needs Hq = G * Hkv)")
    N, bs, k = cell["seq_len"], cell["block_size"], cell["top_k"]
    split = "; give this method its own grid lengths (methods[i].grid) if other lengths fit"
    if bs is not None and bs > N:
        raise ValueError(f"{where}: block_size {bs} is longer than seq_len {N}{split}")
    if bs is not None and k is not None and k > -(-N // bs):
        raise ValueError(f"{where}: top_k {k} is more than the {-(-N // bs)} blocks of seq_len {N} with "
                         f"block_size {bs}{split}")
    if cell["rows"] is not None and cell["rows"] > N:
        raise ValueError(f"{where}: rows {cell['rows']} (query rows measured) is more than seq_len {N}{split}")


def _unused_fields(method: str, mode: str) -> tuple[str, ...]:
    """Grid fields a method does not read (recorded as null, so they make no new points);
    in coverage mode MSA's index branch is the main Q/K (``index_from_qk``)."""
    if method == "full":
        return ("index_dim", "block_size", "top_k")
    return () if SELECTORS[method].inputs == "index" and mode != "coverage" else ("index_dim",)


def _check_cuda_graph(value, where: str, mode: str) -> bool:
    if field_bool(value, where) and mode != "decode":
        raise ValueError(f"{where}: true is for mode: decode (a prefill call is long enough "
                         "that launch overheads do not matter)")
    return value


def _check_device(device: str, points: list[Point]) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA device is visible; use device: cpu")
    if device == "cpu" and any(p.cuda_graph for p in points):
        raise ValueError("cuda_graph: true needs device: cuda")
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    for p in points:
        triton_used = p.backend in ("triton", "triton_q_outer") or p.selection_backend == "triton"
        if device == "cpu" and triton_used and not interpreted:
            raise ValueError(f"methods[{p.method}/{p.backend}]: Triton on device: cpu needs "
                             "TRITON_INTERPRET=1 (slow; for tiny checks only)")
        if device == "cpu" and p.backend in ("sdpa_cudnn", "sdpa_flash"):
            raise ValueError(f"methods[{p.method}]: backend {p.backend!r} is a CUDA kernel; "
                             "use 'sdpa' or 'reference' with device: cpu")
        if p.cuda_graph and "reference" in (p.backend, p.selection_backend):
            raise ValueError(f"methods[{p.method}/{p.backend}]: the reference path syncs with the "
                             "host and cannot be captured in a CUDA graph; set cuda_graph: false")


def parse_config(raw: dict, *, check_device: bool = True) -> SweepConfig:
    """Check a config mapping and expand it into points. ``check_device=False`` skips
    the check that the device (and Triton) can run here, e.g. to inspect a GPU config
    on a laptop."""
    if not isinstance(raw, dict):
        raise ValueError("a sweep config must be a mapping with name, mode, device, grid and methods")
    check_known_fields(raw, TOP_FIELDS, "config")
    for key in ("name", "mode", "device", "grid", "methods"):
        if key not in raw:
            raise ValueError(f"config: missing required field {key!r}")
    name = raw["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"name must be letters, digits, '_', '-' or '.', got {name!r}")
    mode = field_choice(raw["mode"], "mode", tuple(BACKENDS))
    device = field_choice(raw["device"], "device", ("cuda", "cpu"))
    repeats = field_int(raw.get("repeats", 20), "repeats")
    budget = raw.get("max_seconds_per_point", 120.0)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0:
        raise ValueError(f"max_seconds_per_point must be a number > 0, got {budget!r}")
    seed = field_int(raw.get("seed", 0), "seed", minimum=0)
    cuda_graph = _check_cuda_graph(raw.get("cuda_graph", False), "cuda_graph", mode)
    base = _check_grid(raw["grid"], "grid")
    if mode != "coverage":
        extra = [f for f in COVERAGE_FIELDS if f in base]
        if extra:
            raise ValueError(f"grid: {', '.join(extra)} only apply to mode: coverage")
    missing = [f for f in GRID_FIELDS if f not in base and f != "index_dim" and f not in COVERAGE_FIELDS]
    if missing:
        raise ValueError(f"grid: missing field(s) {', '.join(missing)}")
    base.setdefault("index_dim", base["head_dim"])
    for field_name, default in COVERAGE_DEFAULTS.items():
        base.setdefault(field_name, [default if mode == "coverage" else None])
    methods = raw["methods"]
    if not isinstance(methods, list) or not methods:
        raise ValueError("methods must be a non-empty list of {method: ..., backend: ...} entries")

    points: list[Point] = []
    for i, entry in enumerate(methods):
        where = f"methods[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} must be a mapping with method and backend, got {entry!r}")
        check_known_fields(entry, METHOD_FIELDS, where)
        for key in ("method", "backend"):
            if key not in entry:
                raise ValueError(f"{where}: missing required field {key!r}")
        method = field_choice(entry["method"], f"{where}.method", tuple(BACKENDS[mode]))
        backend = field_choice(entry["backend"], f"{where}.backend ({mode} {method})", BACKENDS[mode][method])
        sel_backend = field_choice(entry.get("selection_backend", "auto"), f"{where}.selection_backend",
                                   SELECTION_BACKENDS)
        selector = SELECTORS.get(method)
        triton_selection = selector is not None and selector.timed and "triton" in selector.backends
        if sel_backend == "auto":
            sel_backend = "triton" if device == "cuda" and triton_selection else "reference"
        if mode == "coverage" and sel_backend == "triton":
            raise ValueError(f"{where}.selection_backend: coverage measures the reference selectors "
                             "(the Triton ones pick the same blocks); use 'reference' or 'auto'")
        if not triton_selection and sel_backend == "triton":
            raise ValueError(f"{where}.selection_backend: {method!r} selections have no Triton "
                             "kernel; use 'reference' or 'auto'")
        if method == "full":
            sel_backend = "none"
        default_per = "none" if selector is None else selector.default_per()
        per = entry.get("per", default_per)
        if mode == "decode" and method != "full" and per != "group":
            raise ValueError(f"{where}.per: MSA's decode selects per KV group; got {per!r}")
        if selector is not None and selector.per == "either":
            field_choice(per, f"{where}.per", ("group", "head"))
        elif per != default_per:
            raise ValueError(f"{where}.per: {method!r} selects per {default_per}; got {per!r}")
        stages = field_bool(entry.get("stages", method != "full" and mode != "coverage"), f"{where}.stages")
        graph = _check_cuda_graph(entry.get("cuda_graph", cuda_graph), f"{where}.cuda_graph", mode)
        grid = dict(base, **_check_grid(entry.get("grid", {}), f"{where}.grid"))
        given = entry.get("options", {})
        if given and selector is None:
            raise ValueError(f"{where}.options: full attention takes no options")
        options = ()
        if selector is not None:  # at each of the grid's block sizes and top_k (e.g. sink_blocks < top_k)
            for block_size, top_k in sorted(set(itertools.product(grid["block_size"], grid["top_k"]))):
                options = selector.check_options(given, f"{where}.options", block_size=block_size, top_k=top_k)
        if mode == "decode" and options:
            raise ValueError(f"{where}.options: MSA's decode has no ablation options; got {dict(options)}")
        max_len = entry.get("max_seq_len")
        if max_len is not None:
            max_len = field_int(max_len, f"{where}.max_seq_len")
        unused = _unused_fields(method, mode)
        seen = set()
        for values in itertools.product(*(grid[f] for f in GRID_FIELDS)):
            cell = dict(zip(GRID_FIELDS, values), **dict.fromkeys(unused))
            _check_cell(cell, where)
            point = Point(mode, method, backend, sel_backend, per, stages, max_len, **cell, cuda_graph=graph,
                          options=options)
            if point.point_id not in seen:  # grid fields the method ignores collapse
                seen.add(point.point_id)
                points.append(point)
    ids = [p.point_id for p in points]
    if len(set(ids)) != len(ids):
        dup = next(p for p in points if ids.count(p.point_id) > 1)
        raise ValueError(f"methods: the point {dup.describe()} appears twice")
    if check_device:
        _check_device(device, points)
    return SweepConfig(name=name, mode=mode, device=device, points=tuple(points),
                       description=str(raw.get("description", "")), repeats=repeats,
                       max_seconds_per_point=float(budget), seed=seed, cuda_graph=cuda_graph,
                       source=raw)


def load_config(path, *, check_device: bool = True) -> SweepConfig:
    """Read and check a YAML (or JSON) sweep config."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse_config(raw, check_device=check_device)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
