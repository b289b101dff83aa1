"""RoPE-ND: proper axial mode (norm-preserving, relative) and the official compat mode (the quirk)."""

from __future__ import annotations

import math

import pytest
import torch

from unimodal.rope import RopeND, default_sections, official_base

HEADS = 3


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _positions(n: int, seed: int, high: int = 40) -> torch.Tensor:
    return torch.randint(0, high, (2, n, 3), generator=torch.Generator().manual_seed(seed))


def _rotate(rope: RopeND, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return rope.rotate(x, rope.tables(pos))


def _scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, L, H, D) x (B, L, H, D) -> (B, H, L, L) dot products in float64."""
    return torch.einsum("blhd,bmhd->bhlm", q.double(), k.double())


# ---------------------------------------------------------------------------------------------
# sections and bases


def test_default_sections():
    assert default_sections(64) == (16, 24, 24)
    assert default_sections(32) == (8, 12, 12)
    for hd in (16, 48, 64, 96, 128):
        t, h, w = default_sections(hd)
        assert t + h + w == hd and h == w and t % 2 == 0 and h % 2 == 0 and t > 0


def test_official_base():
    # ((int(8 L / pi) // 100) + 1) * 100: 100 for the released configs (L = 16 or 32)
    assert official_base(16) == 100.0
    assert official_base(32) == 100.0
    assert official_base(40) == 200.0  # int(101.86) = 101
    assert official_base(39) == 100.0  # int(99.3) = 99
    assert official_base(200) == 600.0


def test_rope_constructor_errors():
    with pytest.raises(ValueError, match="sections"):
        RopeND(64, (16, 24, 16))
    with pytest.raises(ValueError, match="sections"):
        RopeND(64, (15, 25, 24))
    with pytest.raises(ValueError, match="mode"):
        RopeND(64, (16, 24, 24), mode="interleaved")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# axial mode


@pytest.mark.parametrize("head_dim", [64, 32])
def test_axial_is_norm_preserving(head_dim):
    rope = RopeND(head_dim, default_sections(head_dim))
    x = _rand(2, 17, HEADS, head_dim, seed=0)
    pos = _positions(17, seed=1, high=200)
    y = _rotate(rope, x, pos)
    assert not torch.allclose(y, x, atol=1e-3), "RoPE must do something at non-zero positions"
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    # also within each axis section (each section is rotated within itself)
    off = 0
    for d in default_sections(head_dim):
        torch.testing.assert_close(y[..., off : off + d].norm(dim=-1), x[..., off : off + d].norm(dim=-1))
        off += d


@pytest.mark.parametrize("head_dim", [64, 32])
@pytest.mark.parametrize("shift", [(3, 7, 15), (0, 0, 11), (5, 5, 5), (-2, 4, 1)])
def test_axial_is_relative(head_dim, shift):
    rope = RopeND(head_dim, default_sections(head_dim))
    q = _rand(2, 13, HEADS, head_dim, seed=2)
    k = _rand(2, 13, HEADS, head_dim, seed=3)
    pq, pk = _positions(13, seed=4), _positions(13, seed=5)
    s = torch.tensor(shift)
    base = _scores(_rotate(rope, q, pq), _rotate(rope, k, pk))
    shifted = _scores(_rotate(rope, q, pq + s), _rotate(rope, k, pk + s))
    torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-4)
    # not a tautology: shifting the queries only changes the scores
    moved = _scores(_rotate(rope, q, pq + s), _rotate(rope, k, pk))
    assert (moved - base).abs().max() > 1e-2


@pytest.mark.parametrize("head_dim", [64, 32])
def test_axial_each_axis_moves_only_its_section(head_dim):
    sections = default_sections(head_dim)
    rope = RopeND(head_dim, sections)
    x = _rand(1, 9, HEADS, head_dim, seed=6)
    pos = _positions(9, seed=7)[:1]
    y = _rotate(rope, x, pos)
    bounds = [0, sections[0], sections[0] + sections[1], head_dim]
    for axis in range(3):
        step = torch.zeros(3, dtype=torch.long)
        step[axis] = 5
        y2 = _rotate(rope, x, pos + step)
        for a in range(3):
            lo, hi = bounds[a], bounds[a + 1]
            changed = (y2[..., lo:hi] - y[..., lo:hi]).abs().max() > 1e-3
            assert bool(changed) == (a == axis), (axis, a)


def _axial_reference(x: torch.Tensor, pos: torch.Tensor, sections, theta: float) -> torch.Tensor:
    """Eq. 4: per section of d dims, pairs (i, i + d/2) rotated by pos * theta^(-2i/d) (float64)."""
    out = torch.empty_like(x, dtype=torch.float64)
    xd = x.double()
    off = 0
    for a, d in enumerate(sections):
        half = d // 2
        inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        ang = pos[..., a : a + 1].double() * inv  # (B, L, half)
        cos, sin = ang.cos().unsqueeze(-2), ang.sin().unsqueeze(-2)
        x1, x2 = xd[..., off : off + half], xd[..., off + half : off + d]
        out[..., off : off + half] = x1 * cos - x2 * sin
        out[..., off + half : off + d] = x2 * cos + x1 * sin
        off += d
    return out


@pytest.mark.parametrize("head_dim,theta", [(64, 10000.0), (32, 100.0)])
def test_axial_matches_eq4_reference(head_dim, theta):
    sections = default_sections(head_dim)
    rope = RopeND(head_dim, sections, theta=theta)
    x = _rand(2, 11, HEADS, head_dim, seed=8)
    pos = _positions(11, seed=9)
    torch.testing.assert_close(
        _rotate(rope, x, pos).double(), _axial_reference(x, pos, sections, theta), rtol=1e-4, atol=1e-4
    )


def test_text_positions_are_relative_1d():
    """Text tokens carry the same index on all axes: scores depend on p_q - p_k only."""
    rope = RopeND(64, default_sections(64))
    q, k = _rand(1, 1, 1, 64, seed=10), _rand(1, 1, 1, 64, seed=11)

    def score(pq: int, pk: int) -> float:
        a = _rotate(rope, q, torch.full((1, 1, 3), pq))
        b = _rotate(rope, k, torch.full((1, 1, 3), pk))
        return float((a.double() * b.double()).sum())

    assert score(10, 4) == pytest.approx(score(106, 100), rel=1e-4, abs=1e-4)
    assert score(10, 4) == pytest.approx(score(6, 0), rel=1e-4, abs=1e-4)
    assert abs(score(10, 4) - score(10, 5)) > 1e-3


def test_rotate_keeps_dtype_within_its_precision():
    """bf16 inputs are rotated in bf16 with float32-computed tables (LLaMA-style): the result is
    the float32 rotation to within bf16 rounding of the products, and keeps its dtype."""
    rope = RopeND(64, default_sections(64))
    x = _rand(1, 5, 2, 64, seed=12)
    pos = _positions(5, seed=13)[:1]
    y16 = _rotate(rope, x.bfloat16(), pos)
    assert y16.dtype == torch.bfloat16
    ref = _rotate(rope, x.bfloat16().float(), pos)
    torch.testing.assert_close(y16.float(), ref, rtol=0, atol=3 * 2**-8 * x.abs().max().item())


# ---------------------------------------------------------------------------------------------
# official mode: the quirk, re-implemented from shared/fixtures/README.md


def _official_reference(x: torch.Tensor, pos: torch.Tensor, sections, bases) -> torch.Tensor:
    """Per axis a with d_a dims: inverse freqs 1/base^(u/64), u = linspace(0, 64, d_a/2) (endpoint
    included); angle table pos * inv_freq repeated twice (d_a dims); axes concatenated into 64 dims;
    q' = q cos + rotate_half(q) sin over the whole head, rotate_half(x) = [-x[32:], x[:32]]."""
    assert x.shape[-1] == 64
    cos, sin = [], []
    for a, (d, base) in enumerate(zip(sections, bases, strict=True)):
        if d == 0:
            continue
        u = torch.linspace(0, 64, d // 2, dtype=torch.float64)
        inv = 1.0 / base ** (u / 64)
        ang = pos[..., a : a + 1].double() * inv
        ang = torch.cat([ang, ang], dim=-1)
        cos.append(ang.cos())
        sin.append(ang.sin())
    cos_t = torch.cat(cos, -1).unsqueeze(-2)  # (B, L, 1, 64)
    sin_t = torch.cat(sin, -1).unsqueeze(-2)
    xd = x.double()
    rot = torch.cat([-xd[..., 32:], xd[..., :32]], dim=-1)
    return xd * cos_t + rot * sin_t


OFFICIAL_CASES = [
    # image: 2D, nd_split [1, 1] -> 32 + 32, no t section; released configs use base 100
    ((0, 32, 32), (official_base(1), official_base(32), official_base(32))),
    ((0, 32, 32), (official_base(1), official_base(40), official_base(200))),  # distinct bases per axis
    # video: nd_split [2, 3, 3] -> 16 + 24 + 24
    ((16, 24, 24), (official_base(16), official_base(16), official_base(16))),
    ((16, 24, 24), (official_base(16), official_base(40), official_base(120))),
]


@pytest.mark.parametrize("sections,bases", OFFICIAL_CASES)
def test_official_matches_readme_reimplementation(sections, bases):
    rope = RopeND(64, sections, theta=bases, mode="official")
    x = _rand(2, 19, HEADS, 64, seed=14)
    pos = _positions(19, seed=15, high=32)
    if sections[0] == 0:
        pos[..., 0] = 0  # images carry (row, column) only
    got = _rotate(rope, x, pos)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _official_reference(x, pos, sections, bases), rtol=1e-5, atol=2e-5)


def test_official_frequencies_include_the_endpoint():
    """The last inverse frequency of every axis is exactly 1/base (u = 64 included)."""
    rope = RopeND(64, (16, 24, 24), theta=(100.0, 200.0, 400.0), mode="official")
    half_t, half_h = 8, 12
    f = rope.freqs.double()
    assert f[half_t - 1].item() == pytest.approx(1 / 100.0, rel=1e-6)
    assert f[16 + half_h - 1].item() == pytest.approx(1 / 200.0, rel=1e-6)
    assert f[-1].item() == pytest.approx(1 / 400.0, rel=1e-6)
    assert f[0].item() == 1.0


@pytest.mark.parametrize("sections", [(0, 32, 32), (16, 24, 24)])
def test_official_is_not_norm_preserving(sections):
    """The documented quirk: dimension j pairs with j + 32 across axes, so the map is not a rotation."""
    rope = RopeND(64, sections, theta=100.0, mode="official")
    x = _rand(1, 8, 1, 64, seed=16)
    pos = torch.tensor([[[0, 3, 5], [0, 1, 2], [0, 7, 0], [0, 0, 9], [2, 4, 6], [1, 1, 1], [0, 5, 5], [3, 2, 1]]])
    y = _rotate(rope, x, pos)
    rel = ((y.norm(dim=-1) - x.norm(dim=-1)) / x.norm(dim=-1)).abs()
    assert rel.max() > 1e-3
    # the same positions under proper axial RoPE keep every norm
    axial = RopeND(64, (16, 24, 24), theta=100.0)
    torch.testing.assert_close(_rotate(axial, x, pos).norm(dim=-1), x.norm(dim=-1))


def test_official_is_not_relative():
    rope = RopeND(64, (0, 32, 32), theta=100.0, mode="official")
    q, k = _rand(1, 1, 1, 64, seed=17), _rand(1, 1, 1, 64, seed=18)

    def score(pq, pk) -> float:
        a = _rotate(rope, q, torch.tensor([[pq]]))
        b = _rotate(rope, k, torch.tensor([[pk]]))
        return float((a.double() * b.double()).sum())

    base = score([0, 3, 5], [0, 1, 2])
    shifted = score([0, 10, 20], [0, 8, 17])  # both shifted by (7, 15)
    assert not math.isclose(base, shifted, rel_tol=1e-3, abs_tol=1e-3)


def test_official_equals_identity_at_origin():
    """At position (0, 0, 0) cos = 1 and sin = 0, so both modes leave q unchanged."""
    x = _rand(1, 4, 2, 64, seed=19)
    pos = torch.zeros(1, 4, 3, dtype=torch.long)
    for mode in ("axial", "official"):
        rope = RopeND(64, (16, 24, 24), theta=100.0, mode=mode)
        torch.testing.assert_close(_rotate(rope, x, pos), x)
