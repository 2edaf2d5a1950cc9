"""Positional encodings, selected by `ModelConfig.position`, all driven by the Batch's
`position_ids` (B, T), never by the model's own arange: packed rows restart positions at 0 in
every document, and tasks may couple positions (digits of equal significance share an id).

What each kind produces, once per forward and shared by all layers:

- `learned`, `sinusoidal`: an embedding added to the token embeddings (a table of max_position).
- `rope`: cos/sin for rotating q and k (Su et al. 2021), rotate-half layout as in Llama.
- `alibi`, `fire`, `relative_bias`: an additive (B, H, T, T) attention bias of position
  differences, so adding a constant to every position id changes nothing (FIRE: while the ids
  stay below its learned threshold L, 512 at initialization). With a KV cache the bias is
  (B, H, T_new, T_cached + T_new): new queries against the positions of every key.
- `abacus`: an embedding of each digit's index within its number (McLeish et al. 2024); it reads
  input_ids, not position_ids, and is the only positional signal.
- `nope`: nothing (Kazemnejad et al. 2023): causal masking alone carries order.

Incremental decoding (gpt.KVCache) passes the cached keys' position ids (`key_position_ids`),
the validity of the new tokens (False = left padding) and, for abacus, the index of the last
cached token, so a number that continues across decoding steps keeps counting its digits.

Randomized positions (Ruoss et al. 2023, arXiv 2305.16843) remap position ids in training so that
a model trained on short rows has seen the large ids that long rows use at test time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lengthwise.config import ModelConfig

READS_POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "fire", "relative_bias")


@dataclass
class PositionInfo:
    """Everything the layers need about positions for one forward."""

    position_ids: Tensor  # (B, T) as used (after randomization in training)
    emb: Tensor | None = None  # (B, T, C), added to the token embeddings
    rope: tuple[Tensor, Tensor] | None = None  # cos, sin: (B, 1, T, D) float32
    bias: Tensor | None = None  # (B, H, T, T) additive attention bias; (B, H, T, Tk) with a cache
    window: int = 0  # > 0: keys with |position_ids[q] - position_ids[k]| >= window masked
    abacus: Tensor | None = None  # (B, T) abacus indices (abacus only), the next step's state


class Positions(nn.Module):
    """The configured positional encoding; `forward` returns a `PositionInfo`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.position
        self.random_max = cfg.random_positions_max
        self.window = cfg.window
        self.max_position = cfg.max_position
        if self.random_max and self.kind not in READS_POSITIONS:
            raise ValueError(
                f"random_positions_max has no effect with position '{self.kind}', which reads no "
                "position ids; set it to 0"
            )
        tabled = self.kind in ("learned", "sinusoidal")
        if self.random_max and tabled and cfg.max_position < self.random_max:
            raise ValueError(
                f"position '{self.kind}' with random_positions_max={self.random_max} needs "
                f"max_position >= {self.random_max}, got {cfg.max_position}"
            )
        if self.window and self.kind != "relative_bias":
            raise ValueError(f"window applies to position 'relative_bias', not '{self.kind}'")
        d, H = cfg.d_model, cfg.n_head
        if self.kind == "learned":
            self.table = nn.Embedding(cfg.max_position, d)
            nn.init.normal_(self.table.weight, std=cfg.init_std)
        elif self.kind == "sinusoidal":
            self.register_buffer("sinusoid", sinusoid_table(cfg.max_position, d), persistent=False)
        elif self.kind == "rope":
            inv_freq = cfg.rope_base ** (
                -torch.arange(0, d // H, 2, dtype=torch.float64) / (d // H)
            )
            self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        elif self.kind == "alibi":
            self.register_buffer("slopes", alibi_slopes(H), persistent=False)
        elif self.kind == "fire":
            self.fire = FIRE(H)
        elif self.kind == "relative_bias":
            self.relative = RelativeBias(H, cfg.max_distance)
        elif self.kind == "abacus":
            if not cfg.digit_token_ids:
                raise ValueError(
                    "abacus needs digit_token_ids (the trainer takes them from the tokenizer)"
                )
            self.abacus_offset = cfg.abacus_offset
            self.table = nn.Embedding(cfg.abacus_max_digits + cfg.abacus_offset + 1, d)
            nn.init.normal_(self.table.weight, std=cfg.init_std)
            self.register_buffer(
                "digit_ids", torch.tensor(cfg.digit_token_ids, dtype=torch.long), persistent=False
            )

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        doc_ids: Tensor | None,
        key_position_ids: Tensor | None = None,
        valid: Tensor | None = None,
        abacus_last: Tensor | None = None,
    ) -> PositionInfo:
        """`key_position_ids` (B, Tk): positions of all keys when they are not the queries (a KV
        cache: cached + new tokens), for the biases. `valid` (B, T) bool: False marks padding,
        which abacus treats as a non-digit. `abacus_last` (B,): abacus index of the token before
        input_ids[:, 0] (from the cache; 0 = not a digit)."""
        pos = position_ids
        if self.training and self.random_max:
            pos = randomize_positions(pos, self.random_max)
        info = PositionInfo(position_ids=pos, window=self.window)
        kpos = key_position_ids
        if self.kind == "learned":
            _check_below(pos, self.max_position, "position id {} >= max_position ({})")
            info.emb = self.table(pos)
        elif self.kind == "sinusoidal":
            _check_below(pos, self.max_position, "position id {} >= max_position ({})")
            info.emb = self.sinusoid[pos]
        elif self.kind == "rope":
            info.rope = rope_cos_sin(pos, self.inv_freq)
        elif self.kind == "alibi":
            info.bias = alibi_bias(pos, self.slopes, kpos)
        elif self.kind == "fire":
            info.bias = self.fire(pos, kpos)
        elif self.kind == "relative_bias":
            info.bias = self.relative(pos, kpos)
        elif self.kind == "abacus":
            info.abacus = self.abacus_ids(input_ids, doc_ids, valid, abacus_last)
            info.emb = self.table(info.abacus)
        return info

    def abacus_ids(
        self,
        input_ids: Tensor,
        doc_ids: Tensor | None,
        valid: Tensor | None = None,
        last: Tensor | None = None,
    ) -> Tensor:
        """(B, T) abacus table rows: digit index within its number, plus in training one random
        offset in [0, abacus_offset] per row on the digits (the trick that lets a model trained
        on 20-digit numbers use the table rows of 100-digit ones). `valid`, `last`: see
        `abacus_indices`."""
        idx = abacus_indices(input_ids, self.digit_ids, doc_ids, valid=valid, last=last)
        if self.training and self.abacus_offset:
            B = idx.shape[0]
            offset = torch.randint(0, self.abacus_offset + 1, (B, 1), device=idx.device)
            idx = torch.where(idx > 0, idx + offset, idx)
        _check_below(
            idx,
            self.table.num_embeddings,
            "abacus index {} >= abacus_max_digits + abacus_offset + 1 ({}): a number is longer "
            "than abacus_max_digits",
        )
        return idx


def _check_below(x: Tensor, limit: int, message: str) -> None:
    """A clear error instead of an index error (or a CUDA device assert) for too-long inputs."""
    if torch.compiler.is_compiling() or x.numel() == 0:
        return
    top = int(x.max())
    if top >= limit:
        raise ValueError(message.format(top, limit))


def randomize_positions(
    position_ids: Tensor, max_position: int, generator: torch.Generator | None = None
) -> Tensor:
    """Map each row's position p to sample[p], `sample` a sorted random subset of
    [0, max_position) drawn per row, so order is kept but ids span the whole range. Documents
    of one row restart at 0 and so map to the same prefix of the row's sample."""
    B = position_ids.shape[0]
    n = int(position_ids.max()) + 1 if position_ids.numel() else 0
    if n > max_position:
        raise ValueError(
            f"random_positions_max ({max_position}) must exceed the largest position id ({n - 1})"
        )
    dev = position_ids.device
    noise = torch.rand(B, max_position, device=dev, generator=generator)
    sample = noise.argsort(dim=1)[:, :n].sort(dim=1).values  # (B, n) distinct, increasing
    return sample.gather(1, position_ids)


def sinusoid_table(n: int, d: int) -> Tensor:
    """(n, d) fixed sinusoids of Vaswani et al. 2017 (sin on even, cos on odd channels)."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    table = torch.zeros(n, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return table.float()


def rope_cos_sin(position_ids: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos and sin (B, 1, T, D) float32 of angle position * inv_freq, halves repeated."""
    angles = position_ids[:, :, None].float() * inv_freq  # (B, T, D/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, T, D)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, H, T, D) by the angles; float32 inside."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


def alibi_slopes(n_head: int) -> Tensor:
    """Per-head slopes of Press et al. 2022: geometric 2^(-8/n), ..., 2^(-8) for a power of two
    heads, otherwise the power-of-two set plus every other slope of the next one."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_two(n_head))
    low = 2 ** math.floor(math.log2(n_head))
    extra = power_of_two(2 * low)[0::2][: n_head - low]
    return torch.tensor(power_of_two(low) + extra)


def alibi_bias(
    position_ids: Tensor, slopes: Tensor, key_position_ids: Tensor | None = None
) -> Tensor:
    """(B, H, T, T) bias -slope * |pos_q - pos_k|. The absolute value equals Press et al.'s
    -slope * (pos_q - pos_k) wherever positions rise along the row (every key is at or before its
    query); with coupled positions a key can carry a larger id, and the distance stays a penalty.
    With `key_position_ids` (B, Tk) (keys other than the queries): (B, H, T, Tk)."""
    kpos = position_ids if key_position_ids is None else key_position_ids
    dist = (position_ids[:, :, None] - kpos[:, None, :]).abs().float()  # (B, T, Tk)
    return -slopes[None, :, None, None] * dist[:, None]


class FIRE(nn.Module):
    """FIRE (Li et al. 2023, arXiv 2310.04418): bias = f(psi(|i - j|) / psi(max(L, i))), psi(x) =
    log(c x + 1), f an MLP 1 -> 32 -> H, c and L learnable (c = 0.1, L = 512 at start; L is
    |multiplier| * 512 so Adam moves it at a useful speed), as in the paper's reference code.
    The normalization by the query position is what lets it interpolate to longer inputs.

    The bias depends only on the pair of position ids, so it is evaluated once per pair of
    distinct ids in the batch and gathered: (U^2 x 32) activations instead of (B T^2 x 32).
    """

    def __init__(self, n_head: int, width: int = 32, init_c: float = 0.1, init_L: float = 512.0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, width), nn.ReLU(), nn.Linear(width, n_head))
        self.c = nn.Parameter(torch.tensor(init_c))
        self.L_multiplier = nn.Parameter(torch.tensor(1.0))
        self.init_L = init_L
        self.eps = 1e-6

    def _bias(self, i: Tensor, j: Tensor) -> Tensor:
        """(..., H) bias for float query positions i and key positions j (broadcast)."""
        L = self.L_multiplier.abs() * self.init_L
        rel = torch.log(torch.abs(self.c * (i - j)) + 1)
        norm = torch.log(torch.abs(self.c * torch.maximum(i, L)) + 1) + self.eps
        return self.mlp((rel / norm)[..., None])

    def forward(self, position_ids: Tensor, key_position_ids: Tensor | None = None) -> Tensor:
        """(B, T) -> (B, H, T, T); with `key_position_ids` (B, Tk): (B, H, T, Tk)."""
        B, T = position_ids.shape
        if key_position_ids is None:
            kpos = position_ids
            ids, inverse = torch.unique(position_ids, return_inverse=True)  # (U,), (B, T)
            q_inv = k_inv = inverse
        else:
            kpos = key_position_ids
            both = torch.cat([position_ids, kpos], dim=1)
            ids, inverse = torch.unique(both, return_inverse=True)  # (U,), (B, T + Tk)
            q_inv, k_inv = inverse[:, :T], inverse[:, T:]
        if ids.numel() ** 2 <= B * T * kpos.shape[1]:  # a table over pairs of distinct ids
            p = ids.float()
            table = self._bias(p[:, None], p[None, :]).permute(2, 0, 1)  # (H, U, U)
            return table[:, q_inv[:, :, None], k_inv[:, None, :]].transpose(0, 1)
        p, pk = position_ids.float(), kpos.float()
        return self._bias(p[:, :, None], pk[:, None, :]).permute(0, 3, 1, 2)


class RelativeBias(nn.Module):
    """A learned bias per head and position difference pos_q - pos_k, clipped to
    [-max_distance, max_distance] (negative differences occur only with coupled positions).
    Starts at zero, i.e. as NoPE, and learns which distances matter."""

    def __init__(self, n_head: int, max_distance: int) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(n_head, 2 * max_distance + 1))

    def forward(self, position_ids: Tensor, key_position_ids: Tensor | None = None) -> Tensor:
        """(B, T) -> (B, H, T, T); with `key_position_ids` (B, Tk): (B, H, T, Tk)."""
        md = self.max_distance
        kpos = position_ids if key_position_ids is None else key_position_ids
        rel = position_ids[:, :, None] - kpos[:, None, :]  # (B, T, Tk)
        return self.table[:, rel.clamp(-md, md) + md].transpose(0, 1)


def abacus_indices(
    input_ids: Tensor,
    digit_ids: Tensor,
    doc_ids: Tensor | None = None,
    *,
    valid: Tensor | None = None,
    last: Tensor | None = None,
) -> Tensor:
    """(B, T) 1-based index of each digit within its run of consecutive digits, 0 for other
    tokens; a run also ends at a document boundary. "12+345=6" -> [1, 2, 0, 1, 2, 3, 0, 1].

    Vectorized: c = running count of digits; at every reset point (a non-digit, or a digit that
    starts a document) remember the count before the run; index = c - the latest such count.

    Incremental decoding: `valid` (B, T) bool marks real tokens (padding counts as a non-digit,
    index 0), `last` (B,) is the index of the token just before input_ids[:, 0] (0: none or not
    a digit); the digits that open the row continue its count."""
    is_digit = torch.isin(input_ids, digit_ids)
    if valid is not None:
        is_digit = is_digit & valid
    d = is_digit.long()
    count = d.cumsum(dim=1)  # (B, T)
    starts = torch.zeros_like(is_digit)
    starts[:, 0] = True
    if doc_ids is not None:
        starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    reset = torch.where(~is_digit, count, torch.where(starts, count - 1, torch.zeros_like(count)))
    idx = count - reset.cummax(dim=1).values
    if last is not None:  # the leading digits of the row continue the cached token's number
        idx = idx + d.cumprod(dim=1) * last[:, None]
    return idx
