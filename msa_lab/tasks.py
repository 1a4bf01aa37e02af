"""Generated long-context tasks with known answers, and an offline text corpus.

Every task returns ``(tokens [B, N], targets [B, N])`` of int64 with ``targets = -100``
where nothing is scored, so a language model trains on ``cross_entropy(logits, targets)``
and is scored on the exact answer tokens. Token ids: ``0`` padding / filler base, a few
marker tokens, then keys and values in disjoint ranges of the vocabulary.

- ``mqar``: multi-query associative recall (Zoology). ``num_pairs`` key-value pairs at the
  start, filler, then the keys again in random order; each must be followed by its value.
- ``passkey``: filler text with a ``PASS`` marker and ``digits`` passkey tokens at a chosen
  ``depth`` (0 = start, 1 = end of the context; None, for training: a random depth per
  sequence); the sequence ends with ``QUERY`` and the model must reproduce the passkey
  (needle in a haystack).
- ``variable_tracking``: ``hops``-long chains ``a = v; b = a; c = b`` among distractor
  chains; at the end ``QUERY c`` must be answered with ``v``.
- ``text``: next-byte prediction on the source of Python's standard library (on every
  machine, no download), bytes 0-255 shifted past the markers. ``split``: ``"train"`` (the
  first 90 % of the bytes) or ``"val"`` (the rest; what ``msa_lab.train.evaluate`` scores).
"""

from __future__ import annotations

import functools
import numbers

import torch

from .validation import check_int, check_positive_int

PAD, PASS, QUERY, ASSIGN, SEP = 0, 1, 2, 3, 4
FIRST_FREE = 5  # first id not used by a marker


def _split_vocab(vocab_size: int, parts: int) -> list[range]:
    """``parts`` disjoint ranges of the ids after the markers."""
    size = (vocab_size - FIRST_FREE) // parts
    if size < 2:
        raise ValueError(f"vocab_size {vocab_size} is too small for this task (needs >= {FIRST_FREE + 2 * parts})")
    return [range(FIRST_FREE + i * size, FIRST_FREE + (i + 1) * size) for i in range(parts)]


def _check_batch(batch, seq_len, vocab_size, gen) -> tuple[int, int, int]:
    """The arguments every task shares: positive sizes and a ``torch.Generator`` (the
    batch is reproducible from it)."""
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"gen must be a torch.Generator, got {type(gen).__name__}")
    return (check_positive_int(batch, "batch"), check_positive_int(seq_len, "seq_len"),
            check_positive_int(vocab_size, "vocab_size"))


def _rand(rng: range, shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(rng.start, rng.stop, shape, generator=gen)


def mqar(batch: int, seq_len: int, vocab_size: int, gen: torch.Generator, *, num_pairs: int = 8):
    batch, seq_len, vocab_size = _check_batch(batch, seq_len, vocab_size, gen)
    num_pairs = check_positive_int(num_pairs, "num_pairs")
    keys_r, vals_r, filler_r = _split_vocab(vocab_size, 3)
    if 4 * num_pairs > seq_len:
        raise ValueError(f"num_pairs={num_pairs} needs seq_len >= {4 * num_pairs}, got {seq_len}")
    if num_pairs > len(keys_r):
        raise ValueError(f"num_pairs={num_pairs} exceeds the {len(keys_r)} distinct keys of vocab_size {vocab_size}")
    tokens = _rand(filler_r, (batch, seq_len), gen)
    targets = torch.full((batch, seq_len), -100)
    for b in range(batch):
        keys = torch.randperm(len(keys_r), generator=gen)[:num_pairs] + keys_r.start
        vals = _rand(vals_r, (num_pairs,), gen)
        tokens[b, 0:2 * num_pairs:2], tokens[b, 1:2 * num_pairs:2] = keys, vals
        order = torch.randperm(num_pairs, generator=gen)
        start = seq_len - 2 * num_pairs
        tokens[b, start::2], tokens[b, start + 1::2] = keys[order], vals[order]
        targets[b, start::2] = vals[order]  # each repeated key is followed by its value
    return tokens, targets


def passkey(batch: int, seq_len: int, vocab_size: int, gen: torch.Generator, *, depth: float | None = None,
            digits: int = 4):
    batch, seq_len, vocab_size = _check_batch(batch, seq_len, vocab_size, gen)
    digits = check_positive_int(digits, "digits")
    digit_r, filler_r = _split_vocab(vocab_size, 2)
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, numbers.Real)):
        raise TypeError(f"depth must be a number in [0, 1] or None, got {type(depth).__name__} {depth!r}")
    if depth is not None and not 0 <= depth <= 1:
        raise ValueError(f"depth must be in [0, 1] (0 = start of the context, 1 = its end), got {depth!r}")
    need = 2 * digits + 3
    if seq_len < need:
        raise ValueError(f"seq_len must be >= {need} for digits={digits}, got {seq_len}")
    tokens = _rand(filler_r, (batch, seq_len), gen)
    targets = torch.full((batch, seq_len), -100)
    key = _rand(digit_r, (batch, digits), gen)
    room = seq_len - need  # filler positions where the passkey can start
    # depth None (training): a fresh depth per sequence, so every depth is seen
    depths = torch.rand(batch, generator=gen) if depth is None else torch.full((batch,), float(depth))
    for b, at in enumerate((depths * room).round().long().tolist()):
        tokens[b, at] = PASS
        tokens[b, at + 1:at + 1 + digits] = key[b]
    tokens[:, -digits - 1] = QUERY
    tokens[:, -digits:] = key
    targets[:, -digits - 1:-1] = key
    return tokens, targets


def variable_tracking(batch: int, seq_len: int, vocab_size: int, gen: torch.Generator, *, hops: int = 2,
                      chains: int = 4):
    batch, seq_len, vocab_size = _check_batch(batch, seq_len, vocab_size, gen)
    hops = check_int(hops, "hops", minimum=0)
    chains = check_positive_int(chains, "chains")
    names_r, vals_r, filler_r = _split_vocab(vocab_size, 3)
    statements = chains * (hops + 1)
    if 3 * statements + 3 > seq_len:
        raise ValueError(f"seq_len must be >= {3 * statements + 3} for hops={hops}, chains={chains}")
    if statements > len(names_r):
        raise ValueError(f"vocab_size {vocab_size} has too few names for {chains} chains of {hops} hops")
    tokens = _rand(filler_r, (batch, seq_len), gen)
    targets = torch.full((batch, seq_len), -100)
    gap = (seq_len - 3 - 3 * statements) // statements  # statements spread over the context
    for b in range(batch):
        names = (torch.randperm(len(names_r), generator=gen)[:statements] + names_r.start).view(chains, hops + 1)
        values = _rand(vals_r, (chains,), gen)
        # Chain c: names[c, 0] = value, names[c, h] = names[c, h - 1]. The chains are
        # interleaved at random, each keeping its own order.
        owner = torch.arange(chains).repeat_interleave(hops + 1)[torch.randperm(statements, generator=gen)]
        hop = [0] * chains
        for i, c in enumerate(owner.tolist()):
            h = hop[c]
            rhs = values[c] if h == 0 else names[c, h - 1]
            pos = i * (3 + gap)
            tokens[b, pos:pos + 3] = torch.stack([names[c, h], torch.tensor(ASSIGN), rhs])
            hop[c] += 1
        query = int(torch.randint(chains, (1,), generator=gen))
        tokens[b, -3:] = torch.stack([torch.tensor(QUERY), names[query, hops], values[query]])
        targets[b, -2] = values[query]
    return tokens, targets


@functools.lru_cache(maxsize=1)
def _corpus(max_bytes: int = 4 << 20) -> torch.Tensor:
    """Bytes of the Python standard library's own source files (on every machine)."""
    import sysconfig
    from pathlib import Path

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    data = bytearray()
    for path in sorted(stdlib.glob("*.py")):
        data += path.read_bytes() + b"\n"
        if len(data) >= max_bytes:
            break
    return torch.frombuffer(data, dtype=torch.uint8).long() + FIRST_FREE


TEXT_SPLITS = ("train", "val")


def text(batch: int, seq_len: int, vocab_size: int, gen: torch.Generator, *, split: str = "train"):
    batch, seq_len, vocab_size = _check_batch(batch, seq_len, vocab_size, gen)
    if split not in TEXT_SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, TEXT_SPLITS))}; got {split!r}")
    if vocab_size < 256 + FIRST_FREE:
        raise ValueError(f"text needs vocab_size >= {256 + FIRST_FREE} (bytes), got {vocab_size}")
    data = _corpus()
    cut = int(0.9 * data.numel())
    data = data[:cut] if split == "train" else data[cut:]
    if data.numel() <= seq_len + 1:
        raise ValueError(f"seq_len {seq_len} is longer than the {split} corpus ({data.numel()} bytes)")
    starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=gen)
    window = torch.stack([data[s:s + seq_len + 1] for s in starts.tolist()])
    return window[:, :-1], window[:, 1:]


GENERATORS = {"mqar": mqar, "passkey": passkey, "variable_tracking": variable_tracking, "text": text}
TASKS = tuple(GENERATORS)


def make_batch(task: str, batch: int, seq_len: int, vocab_size: int, gen: torch.Generator, **options):
    """A batch of ``task`` (one of ``TASKS``) with the task's options."""
    if task not in GENERATORS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}; got {task!r}")
    return GENERATORS[task](batch, seq_len, vocab_size, gen, **options)
