"""In-MPC input checks: a party that skips its own norm check aborts the run, it learns nothing.

A hostile review (2026-12-07) showed that MPyC's openings hide a value only while it is in
range: a model holder inputting rows like ``2^40 · e_f`` read the client's ``u`` off the
openings, and a client with a huge ``u`` read a secret ``Y``. These tests run the three real
processes with one party's local checks removed (the party lies about its input) and expect
every party to abort at the check, before any score is formed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("mpyc") is None:
    pytest.skip("secure top-k needs the [mpc] extra (mpyc)", allow_module_level=True)

from privrec.errors import ConfigError
from privrec.secure import mpc
from privrec.secure.mpc import CLIENT, MODEL_HOLDER, MPCParams, free_ports
from privrec.secure.mpc_checks import (
    check_fits,
    entry_bits,
    norm_compare_bits,
    norm_limit,
    owner_bits,
)

N_ITEMS, FACTORS, K = 24, 4, 3

#: A party whose own input checks are gone: it inputs whatever its file holds.
_LIAR = (
    "import importlib.util, sys\n"
    "import numpy as np\n"
    "spec = importlib.util.spec_from_file_location('_privrec_mpc_party', {path!r})\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules[spec.name] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod._item_matrix = lambda y, n, d, params: np.asarray(y, dtype=np.float64)\n"
    "mod._user_vector = lambda u, d, params: np.asarray(u, dtype=np.float64)\n"
    "def mask(exclude, n):\n"
    "    m = np.zeros(n, dtype=np.int64)\n"
    "    if exclude is not None:\n"
    "        m[np.asarray(exclude).reshape(-1)] += 2\n"  # an 'exclusion' of weight 2
    "    return m\n"
    "mod._exclusion_mask = mask\n"
    "def bits(encoded, b):\n"  # the low b bits of whatever it input, the best it can do
    "    p = int(type(encoded).field.modulus)\n"
    "    v = [int(x) - p if int(x) > p // 2 else int(x) for x in encoded.value.reshape(-1)]\n"
    "    w = np.array([(x + (1 << (b - 1))) % (1 << b) for x in v], dtype=np.int64)\n"
    "    return (w[:, None] >> np.arange(b)) & 1\n"
    "mod.owner_bits = bits\n"
    "sys.exit(mod._party_main())\n"
)


def _run(tmp: Path, inputs: dict[int, dict[str, np.ndarray]], liar: int) -> list[dict[str, object]]:
    spec = {
        "addresses": [["127.0.0.1", p] for p in free_ports(3)],
        "n_items": N_ITEMS,
        "n_factors": FACTORS,
        "k": K,
        "public_items": False,
        "params": asdict(MPCParams()),
        "timeout": 60.0,
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    for pid, arrays in inputs.items():
        np.savez(tmp / f"party-{pid}.npz", **arrays)  # type: ignore[arg-type]
    honest = mpc._PARTY_CODE.format(path=mpc.__file__)
    lying = _LIAR.format(path=mpc.__file__)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                lying if pid == liar else honest,
                str(tmp / "spec.json"),
                str(pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        for pid in range(3)
    ]
    try:
        for p in procs:
            p.wait(90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [json.loads((tmp / f"result-{i}.json").read_text()) for i in range(3)]


@pytest.fixture(scope="module")
def honest() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.normal(0, 0.3, size=(N_ITEMS, FACTORS)), rng.normal(0, 0.3, size=FACTORS)


def _aborted(results: list[dict[str, object]], words: str) -> None:
    for r in results:
        assert r.get("error") == "ProtocolAbort", results
        assert words in str(r["message"]), r["message"]
        assert "items" not in r  # nobody, the client included, got ids


@pytest.mark.parametrize(
    ("row", "words"),
    [
        # the reviewed attack: a row 2^40 · e_f made the openings carry u's f-th entry
        (np.array([2.0**40, 0, 0, 0]), "out-of-range inputs from the model holder"),
        (np.array([-(2.0**30), 0, 0, 0]), "out-of-range inputs from the model holder"),
        # every entry within range, the row over its norm bound (4): caught by the norm step
        (np.array([3.5, 3.5, 3.5, 3.5]), "norm bound from the model holder"),
    ],
)
def test_a_model_holder_that_skips_its_check_aborts_everyone(
    tmp_path: Path, honest: tuple[np.ndarray, np.ndarray], row: np.ndarray, words: str
) -> None:
    y, u = honest
    y = y.copy()
    y[7] = row
    results = _run(
        tmp_path,
        {CLIENT: {"user_vector": u}, MODEL_HOLDER: {"item_factors": y}},
        liar=MODEL_HOLDER,
    )
    _aborted(results, words)


@pytest.mark.parametrize(
    ("u", "exclude", "words"),
    [
        (np.array([2.0**40, 0, 0, 0]), None, "out-of-range inputs from the client"),
        (np.array([0.1, 0.2, 0.1, 0.3]), np.array([3]), "out-of-range inputs from the client"),
        (np.array([3.0, 3.0, 0.0, 0.0]), None, "norm bound from the client"),
    ],
)
def test_a_client_that_skips_its_check_aborts_everyone(
    tmp_path: Path,
    honest: tuple[np.ndarray, np.ndarray],
    u: np.ndarray,
    exclude: np.ndarray | None,
    words: str,
) -> None:
    y, _ = honest
    client: dict[str, np.ndarray] = {"user_vector": u}
    if exclude is not None:
        client["exclude"] = exclude  # the lying client's mask holds a 2 there
    results = _run(tmp_path, {CLIENT: client, MODEL_HOLDER: {"item_factors": y}}, liar=CLIENT)
    _aborted(results, words)


def test_honest_inputs_at_the_bounds_pass(tmp_path: Path) -> None:
    """Rows and ``u`` exactly on their norm bound (rounding included) are not refused."""
    y = np.zeros((N_ITEMS, FACTORS))
    y[:, 0] = np.linspace(-4.0, 4.0, N_ITEMS)
    y[3] = np.full(FACTORS, 2.0)  # ‖y‖ = 4 exactly
    u = np.full(FACTORS, -2.0)
    results = _run(
        tmp_path, {CLIENT: {"user_vector": u}, MODEL_HOLDER: {"item_factors": y}}, liar=-1
    )
    assert all("error" not in r for r in results), results
    assert results[CLIENT]["items"][0] == 0  # the most negative y_0 wins for u_0 = −2


# ------------------------------------------------------------------ the arithmetic, no processes
def test_bits_encode_every_entry_in_range() -> None:
    class _F:
        modulus = 2**61 - 1

    class _Enc:
        field = _F

        def __init__(self, raw: list[int]) -> None:
            self.value = np.array([r % _F.modulus for r in raw], dtype=object)

    f = 16
    b = entry_bits(4.0, f)
    assert b == 20  # round(4 · 2^16) = 2^18 needs 19 bits, plus the sign's
    raw = [0, 1, -1, 4 << f, -(4 << f), 12345]
    bits = owner_bits(_Enc(raw), b)
    assert bits.shape == (len(raw), b) and set(np.unique(bits)) <= {0, 1}
    back = bits @ (1 << np.arange(b)) - (1 << (b - 1))
    np.testing.assert_array_equal(back, raw)
    with pytest.raises(ConfigError):
        owner_bits(_Enc([1 << 40]), b)


def test_norm_limit_admits_rounded_vectors_on_the_bound() -> None:
    rng = np.random.default_rng(0)
    f, d, bound = 16, 32, 4.0
    t = norm_limit(bound, f, d)
    for _ in range(200):
        x = rng.normal(size=d)
        x *= bound / np.linalg.norm(x)
        raw = np.rint(x * 2**f).astype(np.int64)
        assert int(raw @ raw) <= t
    assert norm_limit(bound, f, d) < (bound * 1.001 * 2**f) ** 2  # and nothing much beyond
    assert norm_compare_bits(bound, f, d) == (d * 4 ** (entry_bits(bound, f) - 1)).bit_length() + 1


def test_shapes_whose_checked_values_would_overflow_are_refused() -> None:
    check_fits(32, 16, 4.0, 4.0, 64)
    with pytest.raises(ConfigError, match="raise bit_length"):
        check_fits(32, 16, 4.0, 4.0, 4096)
    check_fits(40, 16, 4.0, 4.0, 4096)


def test_trusting_inputs_is_a_loud_choice_and_every_party_must_make_it(
    tmp_path: Path, honest: tuple[np.ndarray, np.ndarray]
) -> None:
    from privrec.errors import PrivacyWarning
    from privrec.secure.mpc_local import secure_top_k_local

    y, u = honest
    trusting = MPCParams(check_inputs=False)
    with pytest.warns(PrivacyWarning, match="inputs are trusted"):
        res = secure_top_k_local(y, u, K, params=trusting, timeout=60)
    np.testing.assert_array_equal(res.items, np.argsort(-(y @ u))[:K])
    with pytest.raises(ConfigError, match="check_inputs"):
        MPCParams(check_inputs=1).validate()  # type: ignore[arg-type]
    # the setting is a public parameter: a party that checks and one that does not disagree
    assert mpc._public_digest(N_ITEMS, FACTORS, K, trusting, None) != mpc._public_digest(
        N_ITEMS, FACTORS, K, MPCParams(), None
    )
