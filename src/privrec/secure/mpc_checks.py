"""Input checks inside the secure top-k MPC: an out-of-range input aborts instead of leaking.

Why
    MPyC's truncations and comparisons hide a secret value ``x`` by opening ``x + r`` with a
    random ``r`` only ``l + sec_param`` bits wide: that hides ``x`` only while ``|x| < 2^l``.
    Each party checks its own input's norm bound, but a party that skips its check can input
    anything in the 80-bit field — a model holder with secret-mode rows like ``2^40·e_f``
    read the client's ``u`` off the openings of the scores (and so did the helper), and a
    client with a huge ``u`` read a secret ``Y`` the same way. So the bounds are enforced
    inside the MPC, **before anything that depends on a score is opened**.

Protocol (all on Shamir shares in the field of ``SecFxp(l, f)``; ``v`` is an input entry's
raw fixed-point integer ``round(x · 2^f)``)
    1. **Bits.** The owner of each checked vector also inputs, for every entry, the ``b`` bits
       ``β`` of ``v + 2^(b−1)``, with ``b`` the bits of ``round(B · 2^f)`` plus one (``B``
       the public norm bound, which bounds every entry). The client likewise owns the 0/1
       exclusion mask (raw ``m · 2^f``).
    2. **Challenge.** Once every party holds its shares of all inputs (the inputs are then
       fixed: two honest shares determine a threshold-1 sharing), each party commits to 32
       random bytes (SHA-256), then reveals them; the coefficients are AES-CTR output
       (:func:`privrec.secure.prg.expand`) under the hash of all three, so no single party
       can choose them.
    3. **Range.** Per owner, one value is opened:
       ``Σ_e ρ_e (v_e + 2^(b−1) − Σ_i 2^i β_{e,i}) + Σ σ β (β − 1) + Σ τ m (m − 2^f)``
       (the second and third sums over all bits and mask entries: one secure inner
       product, one resharing in all). For honest inputs it is exactly 0 and says nothing;
       if any bit is not 0/1, an entry differs from its bits or a mask entry is not 0/1,
       it is 0 only with probability ≤ 2^-64 over the 64-bit coefficients (a nonzero
       linear form vanishes on at most a 2^-64 fraction of them). Then every entry is in
       ``[−2^(b−1), 2^(b−1))``, whatever the owner did.
    4. **Norms.** With entries bounded, ``‖v‖²`` of ``u`` and of every row of ``Y`` is one
       batched inner product (no truncation) and is compared with the public limit
       ``T = ⌊(B · 2^f + √d / 2)²⌋`` (the norm bound plus the rounding of ``d`` entries) by
       MPyC's comparison, now safely in range (``|T − ‖v‖²| < d · 4^(b−1)``). Per owner,
       only the number of failing rows is opened.
    A nonzero value at step 3 or 4 aborts every party with :class:`ProtocolAbort` naming the
    owner; only then are scores formed and compared, and they stay within the public score
    bound ``S`` the comparisons were sized for.

What it costs and what it does not cover
    The owner's bits are the main cost: ``b`` field elements per entry (20 with the
    defaults), i.e. ``n_items · n_factors · b`` more input shares in secret-items mode — see
    the benchmark in ``docs/secure_scoring.md``. What is opened is a function of the
    cheater's own inputs only. The checks make **inputs** untrusted; a party that deviates
    from the protocol itself (inconsistent shares, wrong messages) is still outside MPyC's
    passive security, as before.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from privrec.errors import ConfigError, ProtocolAbort
from privrec.secure.prg import expand

__all__ = [
    "Checked",
    "check_fits",
    "entry_bits",
    "norm_compare_bits",
    "norm_limit",
    "owner_bits",
    "verify",
]

_ROLE = {0: "client", 1: "model holder", 2: "helper"}


def entry_bits(bound: float, frac_length: int) -> int:
    """``b``: bits of ``v + 2^(b−1)`` for every raw entry ``|v| ≤ round(bound · 2^f)``."""
    return round(bound * (1 << frac_length)).bit_length() + 1


def norm_limit(bound: float, frac_length: int, n_factors: int) -> int:
    """``T``: the largest ``‖v‖²`` an honest owner's rounded vector of norm ``≤ bound`` has."""
    return math.floor((bound * (1 << frac_length) + math.sqrt(n_factors) / 2) ** 2)


def norm_compare_bits(bound: float, frac_length: int, n_factors: int) -> int:
    """Bits of a norm comparison ``T − ‖v‖²`` (sign included) once entries passed step 3."""
    b = entry_bits(bound, frac_length)
    worst = max(n_factors << (2 * (b - 1)), norm_limit(bound, frac_length, n_factors))
    return worst.bit_length() + 1


def check_fits(
    bit_length: int, frac_length: int, user_bound: float, item_bound: float, n_factors: int
) -> None:
    """Refuse a shape whose checked inputs could still overflow a masked opening.

    After the checks ``|v| < 2^(b−1)`` per entry, so a score before truncation is below
    ``d · 2^(b_u − 1) · 2^(b_y − 1)`` and a norm comparison needs
    :func:`norm_compare_bits`; both must stay within the ``bit_length + frac_length`` bits
    MPyC's truncation of a fixed-point product assumes.
    """
    room = bit_length + frac_length
    bu, by = entry_bits(user_bound, frac_length), entry_bits(item_bound, frac_length)
    need = max(
        (n_factors << (bu + by - 2)).bit_length() + 1,
        norm_compare_bits(user_bound, frac_length, n_factors),
        norm_compare_bits(item_bound, frac_length, n_factors),
    )
    if need > room:
        raise ConfigError(
            f"with {n_factors} factors and these norm bounds the in-MPC input checks need "
            f"{need}-bit values but bit_length + frac_length is {room}: raise bit_length"
        )


def owner_bits(encoded: Any, bits: int) -> npt.NDArray[np.int64]:
    """The owner's bits of ``v + 2^(b−1)`` for each entry of an encoded (public) array.

    ``encoded`` is MPyC's own encoding of the owner's values (a finite-field array: what
    ``secfxp.array(x)`` holds), so the bits match the shared ``v`` exactly. Row ``e`` holds
    entry ``e``'s bits, least significant first.
    """
    field_values = np.asarray(encoded.value, dtype=object).reshape(-1)
    p = int(type(encoded).field.modulus)
    half = p // 2
    offset = 1 << (bits - 1)
    shifted = np.array(
        [(int(v) - p if int(v) > half else int(v)) + offset for v in field_values], dtype=object
    )
    if shifted.size and (min(shifted) < 0 or max(shifted) >= 1 << bits):
        raise ConfigError("an own input entry is outside its checked range")  # owners check first
    ints = shifted.astype(np.int64)
    return ((ints[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.int64)


@dataclass(frozen=True)
class Checked:
    """One owner's checked inputs (secure arrays already input), in the order they were input.

    ``values``: the owner's fixed-point vector or matrix (rows are norm-checked);
    ``bits``: its :func:`owner_bits` as a secure integer array of shape ``(entries, b)``;
    ``bound``: the public norm bound of a row; ``mask``: a 0/1 secure array (raw ``m · 2^f``)
    the owner input as well, or ``None``.
    """

    owner: int
    values: Any
    bits: Any
    bound: float
    mask: Any = None


async def _joint_seed(rt: Any) -> bytes:
    """32 bytes no single party chose: commit (SHA-256) to a random share, then reveal it."""
    mine = secrets.token_bytes(32)
    commits = await rt.transfer(hashlib.sha256(mine).hexdigest())
    reveals = await rt.transfer(mine.hex())
    h = hashlib.sha256(b"privrec-mpc-input-check")
    for pid, (c, r) in enumerate(zip(commits, reveals, strict=True)):
        try:
            raw = bytes.fromhex(r) if isinstance(r, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 32 or not isinstance(c, str) or hashlib.sha256(raw).hexdigest() != c:
            raise ProtocolAbort(
                "input check", f"party {pid} ({_ROLE[pid]}) did not open its challenge commitment"
            )
        h.update(raw)
    return h.digest()


def _coefficients(seed: bytes, label: int, n: int) -> npt.NDArray[Any]:
    """``n`` 64-bit challenge coefficients for stream ``label`` (as Python ints)."""
    key = hashlib.sha256(seed + label.to_bytes(4, "little")).digest()
    return expand(key, n, 64).astype(object)


@dataclass(frozen=True)
class _Held:
    """One owner's shares as plain field values (object arrays of ints mod p)."""

    owner: int
    values: npt.NDArray[Any]  # raw v, one row per norm-checked vector
    bits: npt.NDArray[Any]  # (entries, b)
    mask: npt.NDArray[Any] | None  # raw m · 2^f
    bound: float
    frac_length: int


async def _hold(rt: Any, c: Checked) -> _Held:
    values = np.asarray((await rt.gather(c.values)).value, dtype=object)
    bits = np.asarray((await rt.gather(c.bits)).value, dtype=object)
    mask = None
    if c.mask is not None:
        mask = np.asarray((await rt.gather(c.mask)).value, dtype=object).reshape(-1)
    rows = values.reshape(1, -1) if values.ndim == 1 else values
    return _Held(c.owner, rows, bits, mask, c.bound, c.values.frac_length)


def _range_value(secint: Any, h: _Held, seed: bytes, label: int, rt: Any) -> Any:
    """The secure value of step 3 for one owner (0 for honest inputs)."""
    field = secint.field
    v = h.values.reshape(-1)
    n_bits = h.bits.shape[1]
    weights = np.array([1 << i for i in range(n_bits)], dtype=object)
    rel = v + (1 << (n_bits - 1)) - h.bits.dot(weights)
    lin = field(int(rel.dot(_coefficients(seed, 2 * label, rel.size))) % field.modulus)
    left, right = [h.bits.reshape(-1)], [h.bits.reshape(-1) - 1]
    if h.mask is not None:
        left.append(h.mask)
        right.append(h.mask - (1 << h.frac_length))
    x = np.concatenate(left)
    x = x * _coefficients(seed, 2 * label + 1, x.size)
    y = np.concatenate(right)
    return rt.np_matmul(secint.array(field.array(x)), secint.array(field.array(y))) + secint(lin)


async def verify(rt: Any, secint: Any, checks: list[Checked]) -> None:
    """Run steps 2–4 for every owner; abort every party if any owner's inputs are out of range.

    Nothing score-dependent has been opened when this returns; it must be awaited before the
    scores are formed.
    """
    # every share in hand first: the inputs are fixed before anyone reveals a challenge share
    held = [await _hold(rt, c) for c in checks]
    seed = await _joint_seed(rt)
    opened = await rt.output([_range_value(secint, h, seed, i, rt) for i, h in enumerate(held)])
    bad = [h.owner for h, o in zip(held, opened, strict=True) if int(o) != 0]
    if bad:
        raise ProtocolAbort(
            "input check",
            "out-of-range inputs from the "
            + " and ".join(_ROLE[b] for b in bad)
            + " (an entry beyond the norm bound, or a mask entry not 0/1): nothing was output",
        )
    fails = await rt.output([_norm_fails(rt, secint, h) for h in held])
    bad = [h.owner for h, o in zip(held, fails, strict=True) if int(o) != 0]
    if bad:
        raise ProtocolAbort(
            "input check",
            "inputs over their norm bound from the "
            + " and ".join(_ROLE[b] for b in bad)
            + ": nothing was output",
        )


def _norm_fails(rt: Any, secint: Any, h: _Held) -> Any:
    """Secure count of the owner's rows whose ``‖v‖²`` exceeds :func:`norm_limit` (step 4)."""
    n, d = h.values.shape
    rows = secint.array(secint.field.array(h.values))
    q = rt.np_matmul(rt.np_reshape(rows, (n, 1, d)), rt.np_reshape(rows, (n, d, 1)))
    z = norm_limit(h.bound, h.frac_length, d) - rt.np_reshape(q, (n,))
    fails = rt.np_sgn(z, l=norm_compare_bits(h.bound, h.frac_length, d), LT=True)
    return rt.np_sum(fails)
