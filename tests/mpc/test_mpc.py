"""MPyC secure top-k: three real processes on 127.0.0.1; only the client gets the ids.

Each protocol run starts three Python processes, so the file keeps to a handful of runs on
small catalogues (≤ 60 items, 8 factors). Data are chosen with clear score gaps (checked in
the test) so that fixed-point rounding (~1e-4 here) cannot reorder the plaintext top-k.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

# Not ``importorskip``: importing mpyc parses sys.argv (pytest's own flags) at import time.
if importlib.util.find_spec("mpyc") is None:
    pytest.skip("secure top-k needs the [mpc] extra (mpyc)", allow_module_level=True)

from privrec.errors import (
    ConfigError,
    InvalidInputError,
    PeerUnavailable,
    ProtocolAbort,
)
from privrec.secure import mpc, mpc_local, mpc_select
from privrec.secure.mpc import (
    CLIENT,
    HELPER,
    MODEL_HOLDER,
    MPCParams,
    free_ports,
    run_party,
)
from privrec.secure.mpc_local import secure_recommend, secure_top_k_local

N_ITEMS, FACTORS, K = 60, 8, 5


def _plain_top_k(y: np.ndarray, u: np.ndarray, k: int, exclude: list[int]) -> np.ndarray:
    s = y @ u
    s[exclude] = -np.inf
    order = np.argsort(-s, kind="stable")
    kept = s[order[: k + 1]]
    assert np.all(-np.diff(kept) > 2e-3), "test data must have clear score gaps"
    return order[:k]


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[int]]:
    rng = np.random.default_rng(3)
    y = rng.normal(0.0, 0.3, size=(N_ITEMS, FACTORS))
    u = rng.normal(0.0, 0.3, size=FACTORS)
    best = np.argsort(-(y @ u))
    exclude = [int(best[0]), int(best[2]), 7]  # excluded items include the plaintext winners
    return y, u, exclude


def _launch(tmp: Path, spec: dict[str, object], inputs: dict[int, dict[str, np.ndarray]]) -> list:
    """Start the three party processes by hand (explicit 127.0.0.1 addresses) and wait."""
    (tmp / "spec.json").write_text(json.dumps(spec))
    for pid, arrays in inputs.items():
        np.savez(tmp / f"party-{pid}.npz", **arrays)  # type: ignore[arg-type]
    code = mpc._PARTY_CODE.format(path=mpc.__file__)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp / "spec.json"), str(pid)],
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


def _spec(**kw: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "addresses": [["127.0.0.1", p] for p in free_ports(3)],
        "n_items": N_ITEMS,
        "n_factors": FACTORS,
        "k": K,
        "public_items": False,
        "params": asdict(MPCParams()),
        "timeout": 60.0,
    }
    spec.update(kw)
    return spec


# ------------------------------------------------------------------ correctness
def test_secret_items_top_k_equals_plaintext_and_only_client_gets_it(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, list[int]]
) -> None:
    y, u, exclude = data
    expected = _plain_top_k(y, u, K, exclude)
    results = _launch(
        tmp_path,
        _spec(),
        {
            CLIENT: {"user_vector": u, "exclude": np.array(exclude)},
            MODEL_HOLDER: {"item_factors": y},
        },
    )
    assert all("error" not in r for r in results), results
    np.testing.assert_array_equal(results[CLIENT]["items"], expected)
    assert not set(results[CLIENT]["items"]) & set(exclude)
    # parties 1 and 2 end with nothing: no ids, and they held only their own inputs
    assert results[MODEL_HOLDER]["items"] is None
    assert results[HELPER]["items"] is None
    assert not (tmp_path / f"party-{HELPER}.npz").exists()
    assert all(r["bytes_sent"] > 0 for r in results)


def test_public_items_over_tls_top_k_equals_plaintext(
    data: tuple[np.ndarray, np.ndarray, list[int]],
) -> None:
    y, u, exclude = data
    res = secure_top_k_local(y, u, K, exclude=exclude, public_items=True, tls=True, timeout=60)
    np.testing.assert_array_equal(res.items, _plain_top_k(y, u, K, exclude))
    assert len(res.bytes_sent) == 3 and res.total_bytes > 0
    assert res.seconds > 0 and res.wall_seconds >= res.seconds


# ------------------------------------------------------------------ refusals
def test_bad_inputs_are_refused_before_anything_starts(
    data: tuple[np.ndarray, np.ndarray, list[int]],
) -> None:
    y, u, _ = data
    with pytest.raises(InvalidInputError, match=r"shape \(8,\)"):
        secure_top_k_local(y, u[:5], 3)
    with pytest.raises(InvalidInputError, match="NaN"):
        secure_top_k_local(y, np.full(FACTORS, np.nan), 3)
    with pytest.raises(InvalidInputError, match="user_norm_bound"):
        secure_top_k_local(y, u * 100, 3)
    big = y.copy()
    big[4] *= 100
    with pytest.raises(InvalidInputError, match="item 4"):
        secure_top_k_local(big, u, 3)
    with pytest.raises(ConfigError, match="k must be"):
        secure_top_k_local(y, u, 0)
    with pytest.raises(ConfigError, match="k must be"):
        secure_top_k_local(y, u, N_ITEMS + 1)
    with pytest.raises(InvalidInputError, match="outside the catalogue"):
        secure_top_k_local(y, u, 3, exclude=[N_ITEMS])
    with pytest.raises(InvalidInputError, match="integer"):
        secure_top_k_local(y, u, 3, exclude=[0.5])
    with pytest.raises(ConfigError, match="bit_length"):
        secure_top_k_local(y, u, 3, params=MPCParams(user_norm_bound=1e4, item_norm_bound=1e4))
    with pytest.raises(ConfigError, match="timeout"):
        secure_top_k_local(y, u, 3, timeout=0)


def test_secure_recommend_needs_a_factor_model() -> None:
    class NoFactors:
        pass

    with pytest.raises(ConfigError, match="no item_factors_"):
        secure_recommend(NoFactors(), np.zeros(5), k=2)


def test_run_party_refuses_role_mismatches(data: tuple[np.ndarray, np.ndarray, list[int]]) -> None:
    y, u, _ = data
    addrs = [("127.0.0.1", p) for p in (1, 2, 3)]
    common = {"n_items": N_ITEMS, "n_factors": FACTORS, "k": 3}
    with pytest.raises(ConfigError, match="exactly 3 parties"):
        run_party(0, addrs[:2], user_vector=u, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must provide its user vector"):
        run_party(CLIENT, addrs, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="only the client"):
        run_party(HELPER, addrs, user_vector=u, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must not hold the secret item factors"):
        run_party(HELPER, addrs, item_factors=y, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model holder"):
        run_party(MODEL_HOLDER, addrs, **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="party_id"):
        run_party(3, addrs, **common)  # type: ignore[arg-type]


def test_parties_that_disagree_on_public_parameters_abort(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, list[int]]
) -> None:
    y, u, _ = data
    spec = _spec()
    (tmp_path / "other").mkdir()
    other = {**spec, "k": K + 1}  # the helper was configured with another k
    (tmp_path / "other" / "spec.json").write_text(json.dumps(other))
    code = mpc._PARTY_CODE.format(path=mpc.__file__)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    np.savez(tmp_path / "party-0.npz", user_vector=u)
    np.savez(tmp_path / "party-1.npz", item_factors=y)
    specs = [tmp_path / "spec.json", tmp_path / "spec.json", tmp_path / "other" / "spec.json"]
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(s), str(i)], stderr=subprocess.DEVNULL)
        for i, s in enumerate(specs)
    ]
    try:
        rcs = [p.wait(60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert rcs == [1, 1, 1]
    client = json.loads((tmp_path / "result-0.json").read_text())
    assert client["error"] == "ProtocolAbort"
    assert "disagree" in client["message"] and "[2]" in client["message"]


# ------------------------------------------------------------------ faults and clean-up
def _alive_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmd and int(entry.name) != os.getpid():
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for processes")
def test_failed_party_stops_the_others_and_names_itself(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray, list[int]]
) -> None:
    y, u, _ = data
    marker = f"privrec-mpc-test-{os.getpid()}-crash"
    fake = (
        f"import sys, time; tag = {marker!r}\nif sys.argv[2] == '2': sys.exit(3)\ntime.sleep(60)\n"
    )
    monkeypatch.setattr(mpc, "_PARTY_CODE", fake)
    t0 = time.monotonic()
    with pytest.raises(ProtocolAbort, match=r"party 2 \(helper\) failed.*exit status 3"):
        secure_top_k_local(y, u, 3, timeout=60)
    assert time.monotonic() - t0 < 30  # did not wait for the timeout
    assert _alive_with(marker) == []


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for processes")
def test_stuck_parties_time_out_and_are_killed(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray, list[int]]
) -> None:
    y, u, _ = data
    marker = f"privrec-mpc-test-{os.getpid()}-stuck"
    monkeypatch.setattr(mpc, "_PARTY_CODE", f"import time; tag = {marker!r}; time.sleep(60)")
    with pytest.raises(PeerUnavailable, match="did not finish within 1 s"):
        secure_top_k_local(y, u, 3, timeout=1.0)
    assert _alive_with(marker) == []


def test_lone_party_times_out_with_a_typed_error(
    data: tuple[np.ndarray, np.ndarray, list[int]],
) -> None:
    """A real party whose peers never come: PeerUnavailable after its own timeout."""
    y, _, _ = data
    code = (
        "import numpy as np\n"
        "from privrec.errors import PeerUnavailable\n"
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {mpc.__file__!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['m'] = m\n"
        "spec.loader.exec_module(m); run_party, free_ports = m.run_party, m.free_ports\n"
        "addrs = [('127.0.0.1', p) for p in free_ports(3)]\n"
        "y = np.load(__import__('sys').argv[1])\n"
        "try:\n"
        "    run_party(1, addrs, n_items=y.shape[0], n_factors=y.shape[1], k=3,\n"
        "              item_factors=y, timeout=1.0)\n"
        "except PeerUnavailable as exc:\n"
        "    print('PeerUnavailable', exc)\n"
    )
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"privrec-mpc-y-{os.getpid()}.npy"
    np.save(path, y)
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
        )
    finally:
        path.unlink()
    assert "PeerUnavailable party 1 (model holder)" in out.stdout, out.stderr[-2000:]


def test_params_compare_bits_and_bounds() -> None:
    p = MPCParams()
    p.validate()
    assert p.score_bound == 17.0
    assert p.exclusion_offset == 35
    s, c, low = p.score_bound, p.exclusion_offset, p.padding_value
    # bands are ordered: items in [-S, S] > excluded in [-S - C, S - C] > padding
    assert s - c < -s and low < -s - c
    # every difference fits the signed comparison width
    assert (2 * s + c + 1) * 2**p.frac_length < 2 ** (p.compare_bits - 1)
    assert p.compare_bits == 24 < p.bit_length
    with pytest.raises(ConfigError, match="frac_length"):
        MPCParams(frac_length=4).validate()
    with pytest.raises(ConfigError, match="item_norm_bound"):
        MPCParams(item_norm_bound=float("inf")).validate()


class _PlainRuntime:
    """The few MPyC operations the selection network uses, on plain numpy arrays."""

    @staticmethod
    def np_sgn(a: np.ndarray, l: int, LT: bool) -> np.ndarray:  # noqa: E741
        assert LT and np.all(np.abs(a) * 2**16 < 2 ** (l - 1)), "comparison out of range"
        return (a < 0).astype(np.float64)

    @staticmethod
    def np_concatenate(arrays: tuple[np.ndarray, ...], axis: int = 0) -> np.ndarray:
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def np_reshape(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return a.reshape(shape)


class _PlainFxp:
    @staticmethod
    def array(x: np.ndarray, integral: bool) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)


def test_selection_network_returns_the_top_k_for_every_shape() -> None:
    """The network logic in the clear, for every n ≤ 33 and k ≤ n (distinct scores)."""
    p = MPCParams()
    rng = np.random.default_rng(0)
    for n in range(1, 34):
        for k in range(1, n + 1):
            scores = rng.permutation(n) / n * 2 * p.score_bound - p.score_bound
            scores[rng.random(n) < 0.3] -= p.exclusion_offset  # excluded items
            ids = mpc_select._select_top(
                _PlainRuntime(), _PlainFxp(), scores, k, p.padding_value, p.compare_bits
            )
            np.testing.assert_array_equal(ids, np.argsort(-scores)[:k], err_msg=f"{n=} {k=}")


def test_bitonic_stages_sort_any_input() -> None:
    rng = np.random.default_rng(1)
    for width in (1, 2, 4, 8, 16, 32):
        for _ in range(20):
            x = rng.normal(size=width)
            for p, q in mpc_select._bitonic_stages(width, full_sort=True):
                hi, lo = np.maximum(x[p], x[q]), np.minimum(x[p], x[q])
                x[p], x[q] = hi, lo
            assert np.all(np.diff(x) <= 0)


def test_launcher_retries_once_when_a_free_port_was_taken(
    monkeypatch: pytest.MonkeyPatch, data: tuple[np.ndarray, np.ndarray, list[int]]
) -> None:
    y, u, _ = data
    calls: list[int] = []
    done = {"bytes_sent": 10, "seconds": 1.0, "cpu_seconds": 0.5}

    def fake(*args: object) -> list[dict[str, object]]:
        calls.append(1)
        if len(calls) == 1:
            raise ProtocolAbort(
                "party",
                "party 1 (model holder) failed — OSError: [Errno 98] Address already in use",
            )
        return [{"items": [5, 4, 3], **done}, {"items": None, **done}, {"items": None, **done}]

    monkeypatch.setattr(mpc_local, "_run_processes", fake)
    res = secure_top_k_local(y, u, 3)
    assert len(calls) == 2 and res.items.tolist() == [5, 4, 3] and res.total_bytes == 30

    def other_failure(*args: object) -> list[dict[str, object]]:
        calls.append(1)
        raise ProtocolAbort("party", "party 2 (helper) failed — exit status 3")

    calls.clear()
    monkeypatch.setattr(mpc_local, "_run_processes", other_failure)
    with pytest.raises(ProtocolAbort, match="exit status 3"):
        secure_top_k_local(y, u, 3)
    assert len(calls) == 1  # not retried


# ------------------------------------------------------------------ TLS
def test_tls_material_names_each_party_and_protects_keys(tmp_path: Path) -> None:
    from cryptography import x509

    d = mpc.make_tls_material(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    for i in range(3):
        cert = x509.load_pem_x509_certificate((d / f"party-{i}.pem").read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [mpc.tls_name(i)]
        assert cert.issuer == ca.subject
        assert (d / f"party-{i}.key").stat().st_mode & 0o777 == 0o600
    assert (d / "ca.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="not found"):
        mpc.TLSFiles.in_dir(tmp_path / "missing", 0).contexts()


def test_a_party_with_another_partys_certificate_is_refused(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, list[int]]
) -> None:
    """Party 1 presents party 2's (valid) certificate: party 0 aborts at the handshake.

    Only parties 0 and 1 run: with party 2 up, party 1 could be refused by party 2 and stop
    (closing its listener) before party 0's handshake, which then saw refused connections
    until its timeout — a third of runs failed on time, not on the check this test pins."""
    y, u, _ = data
    good = mpc.make_tls_material(tmp_path / "tls")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("ca.pem", "party-0.pem", "party-0.key", "party-2.pem", "party-2.key"):
        (bad / name).write_bytes((good / name).read_bytes())
    (bad / "party-1.pem").write_bytes((good / "party-2.pem").read_bytes())
    (bad / "party-1.key").write_bytes((good / "party-2.key").read_bytes())
    for key in bad.glob("*.key"):
        key.chmod(0o600)  # (a copied key others can read would be refused before TLS starts)
    spec = _spec(tls_dir=str(bad), timeout=30.0)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    np.savez(tmp_path / "party-0.npz", user_vector=u)
    np.savez(tmp_path / "party-1.npz", item_factors=y)
    code = mpc._PARTY_CODE.format(path=mpc.__file__)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "spec.json"), str(i)],
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    try:
        assert procs[0].wait(30) == 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    client = json.loads((tmp_path / "result-0.json").read_text())
    assert client["error"] == "ProtocolAbort"
    assert "TLS with party 1" in client["message"]


def test_a_peers_pickle_can_build_plain_data_only() -> None:
    """MPyC reads peers' transfers and share arrays with pickle; a crafted pickle ran code in
    the honest parties and copied the secret item matrix (hostile review, 2026-12-07). The
    runtime now reads them with a loader that builds plain data only."""
    import os
    import pickle

    import numpy as np

    from privrec.errors import MessageRejected
    from privrec.secure.mpc_wire import SAFE_PICKLE, install, safe_loads

    for value in ("digest", [1, 2**200, -3], (b"x", 1.5, {"a": None})):
        assert safe_loads(pickle.dumps(value)) == value
    # numpy rebuilding is refused too: a dtype state with forged flags turned a peer's raw
    # bytes into object pointers (SIGSEGV in the honest parties; a reviewer's bypass), so share
    # arrays travel as field elements (--mix32-64bit) and no pickle names numpy
    for array in (np.arange(6, dtype=np.int64), np.array([2**100, 5], dtype=object)):
        with pytest.raises(MessageRejected, match="could run code"):
            safe_loads(pickle.dumps(array))

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    with pytest.raises(MessageRejected, match="could run code"):
        safe_loads(pickle.dumps(Evil()))
    with pytest.raises(MessageRejected, match="malformed"):
        safe_loads(pickle.dumps([1, 2, 3])[:-3])
    # plain data amplifies (one DUP byte, one 8-byte list slot: 16 MiB took 397 MiB, past the
    # buffer cap's bound): the only pickle, the parameter digest, is ~80 bytes; larger is refused
    from privrec.secure.mpc_wire import MAX_PICKLE_BYTES

    bomb = b"](N" + b"2" * MAX_PICKLE_BYTES + b"e."
    with pytest.raises(MessageRejected, match="more than"):
        safe_loads(bomb)
    assert len(safe_loads(bomb[: MAX_PICKLE_BYTES - 8] + b"e.")) > 60_000
    import types

    runtime = types.SimpleNamespace(pickle=pickle)  # stands in for mpyc.runtime
    install(runtime)
    assert runtime.pickle is SAFE_PICKLE  # what MPyC's input/output/transfer call


def test_a_peer_cannot_make_a_party_buffer_without_bound() -> None:
    """MPyC keeps every byte a peer sends (up to 4 GiB a message, and any number of messages
    for program counters nobody asked for); a connection now holds at most the cap, then is
    closed and every pending and later receive fails with MessageRejected."""
    import asyncio
    import struct
    import types

    mpyc_asyncoro = pytest.importorskip("mpyc.asyncoro")
    from privrec.errors import MessageRejected
    from privrec.secure.mpc_wire import bounded_exchanger, buffer_cap

    assert buffer_cap(10_000, 64) == (64 << 20) + 256 * 640_000  # 164 MiB at 10k × 64
    loop = asyncio.new_event_loop()
    try:
        rt = types.SimpleNamespace(_loop=loop, options=types.SimpleNamespace(no_prss=True))
        cls = bounded_exchanger(mpyc_asyncoro.MessageExchanger, cap=1000)
        ex = cls(rt, 1)  # the peer is party 1 (no identity header expected)
        aborted: list[bool] = []
        ex.transport = types.SimpleNamespace(abort=lambda: aborted.append(True))

        def packet(pc: int, size: int) -> bytes:
            return struct.pack("<qI", pc, size) + b"\0" * size

        waiting = ex.receive(7)  # a receive posted before its message arrives
        ex.data_received(packet(1, 400))  # unsolicited, kept: 400 bytes held
        ex.data_received(packet(7, 100))  # answers the waiting receive
        assert waiting.result() == b"\0" * 100 and not aborted
        pending = ex.receive(8)
        ex.data_received(packet(2, 400)[:300])  # 700 held (a partial message counts)
        assert not aborted
        ex.data_received(b"\0" * 400)  # would hold 1,100 > 1,000: refused
        assert aborted == [True] and ex.bytes == bytearray() and not ex.buffers
        with pytest.raises(MessageRejected, match="memory"):
            pending.result()
        with pytest.raises(MessageRejected, match="memory"):
            ex.receive(9).result()
        ex.data_received(packet(3, 10))  # anything after the refusal is dropped
        assert not ex.buffers

        # empty messages are not free (a reviewer buffered 2M of them, 142 MiB, with a count
        # of 0), the count is kept as it goes (no walk per message), and the runtime's
        # refusal future fails, so the party aborts at once instead of waiting its timeout
        from privrec.secure import mpc_wire

        rt._privrec_refused = loop.create_future()
        many = bounded_exchanger(mpyc_asyncoro.MessageExchanger, cap=1 << 30)(rt, 1)
        many.transport = types.SimpleNamespace(abort=lambda: None)
        burst = b"".join(packet(pc, 0) for pc in range(mpc_wire.MAX_PENDING + 1))
        many.data_received(burst[: len(burst) // 2])
        assert many.buffers.held == len(many.buffers) * mpc_wire.ENTRY_OVERHEAD > 0
        many.data_received(burst[len(burst) // 2 :])
        assert not many.buffers and many.buffers.held == 0
        with pytest.raises(MessageRejected, match="messages"):
            rt._privrec_refused.result()
    finally:
        loop.close()


def test_a_refused_peer_aborts_the_protocol_at_once() -> None:
    """until_refused: the protocol is cancelled and the refusal raised when a connection
    refuses its peer, instead of the receives waiting out the timeout."""
    import asyncio
    import time
    import types

    from privrec.errors import MessageRejected
    from privrec.secure.mpc_wire import until_refused

    rt = types.SimpleNamespace()

    async def protocol() -> str:
        await asyncio.sleep(30)  # a receive that will never complete
        return "done"

    async def main() -> None:
        async def refuse_soon() -> None:
            await asyncio.sleep(0.05)
            rt._privrec_refused.set_exception(MessageRejected("refused"))

        pending = asyncio.ensure_future(refuse_soon())
        try:
            await until_refused(protocol(), rt)
        finally:
            await pending

    t0 = time.perf_counter()
    with pytest.raises(MessageRejected, match="refused"):
        asyncio.run(main())
    assert time.perf_counter() - t0 < 5

    async def fine() -> str:
        return "ok"

    async def main_ok() -> str:
        return str(await until_refused(fine(), rt))

    assert asyncio.run(main_ok()) == "ok"


def test_a_repeated_message_or_a_lost_link_aborts_the_party() -> None:
    """A reviewer found a repeated message number crashed MPyC's parser (the client then waited
    its timeout) and a refusal on one link left the other honest party waiting: a repeat is
    refused, and a link reset — or closed before this party's own shutdown — fails the party's
    refusal future (the protocol aborts at once); MPyC's own shutdown closes are not aborts."""
    import asyncio
    import struct
    import types

    mpyc_asyncoro = pytest.importorskip("mpyc.asyncoro")
    from privrec.errors import MessageRejected, ProtocolAbort
    from privrec.secure.mpc_wire import bounded_exchanger

    loop = asyncio.new_event_loop()
    try:

        def world(closing: bool) -> tuple[types.SimpleNamespace, object]:
            rt = types.SimpleNamespace(
                _loop=loop,
                options=types.SimpleNamespace(no_prss=True),
                parties=[],
                _privrec_refused=loop.create_future(),
                _privrec_closing=closing,
                unset_protocol=lambda pid: None,
            )
            ex = bounded_exchanger(mpyc_asyncoro.MessageExchanger, cap=1 << 20)(rt, 1)
            ex.transport = types.SimpleNamespace(abort=lambda: None)
            return rt, ex

        rt, ex = world(False)
        packet = struct.pack("<qI", 5, 3) + b"abc"
        ex.data_received(packet + packet)  # the same message number twice
        with pytest.raises(MessageRejected, match="twice"):
            rt._privrec_refused.result()
        rt, ex = world(False)
        with pytest.raises(ConnectionResetError):
            ex.connection_lost(ConnectionResetError())  # MPyC re-raises it (logged by asyncio)
        with pytest.raises(ProtocolAbort, match="reset"):
            rt._privrec_refused.result()
        rt, ex = world(False)
        ex.connection_lost(None)  # closed mid-protocol
        with pytest.raises(ProtocolAbort, match="closed"):
            rt._privrec_refused.result()
        rt, ex = world(True)
        ex.connection_lost(None)  # MPyC's own shutdown
        assert not rt._privrec_refused.done()
    finally:
        loop.close()


def test_a_connecting_peer_may_claim_only_its_own_id() -> None:
    """MPyC believed the two id bytes a connecting peer sends: a party (with TLS, any holder of
    a party certificate) could claim another's id — or one already connected — and receive the
    messages meant for it, and a connection that closed before saying who it was aborted the
    listening party. A claim is now accepted only for a lower, not yet connected party whose
    certificate (over TLS) names it; any other connection is dropped alone."""
    import asyncio
    import struct
    import types
    from typing import Any

    mpyc_asyncoro = pytest.importorskip("mpyc.asyncoro")
    from privrec.secure.mpc_tls import tls_name
    from privrec.secure.mpc_wire import bounded_exchanger

    loop = asyncio.new_event_loop()
    try:
        parties = [types.SimpleNamespace(pid=i, protocol=None) for i in range(3)]
        parties[2].protocol = loop.create_future()  # this party: 2, listening for 0 and 1
        rt = types.SimpleNamespace(
            _loop=loop,
            pid=2,
            parties=parties,
            options=types.SimpleNamespace(no_prss=True),
            _privrec_refused=loop.create_future(),
            _privrec_closing=False,
            set_protocol=lambda pid, proto: setattr(parties[pid], "protocol", proto),
            unset_protocol=lambda pid: setattr(parties[pid], "protocol", None),
        )
        cls = bounded_exchanger(mpyc_asyncoro.MessageExchanger, cap=1 << 20)

        def connect(claim: int, cert_name: str | None = None) -> tuple[Any, list[bool]]:
            aborted: list[bool] = []
            extra = {}
            if cert_name is not None:
                extra = {
                    "ssl_object": object(),
                    "peercert": {"subjectAltName": (("DNS", cert_name),)},
                }
            ex = cls(rt)  # the listening side: the peer's id comes in its first bytes
            ex.transport = types.SimpleNamespace(
                abort=lambda: aborted.append(True), get_extra_info=extra.get
            )
            ex.data_received(claim.to_bytes(2, "little") + struct.pack("<qI", 1, 0))
            return ex, aborted

        for bad in (2, 5, 65535):  # itself, no such party
            ex, aborted = connect(bad)
            assert aborted == [True] and all(p.protocol is None for p in parties[:2])
            ex.connection_lost(None)  # dropping it does not abort this party
        ex, aborted = connect(0, cert_name=tls_name(1))  # party 1's certificate claiming 0
        assert aborted == [True] and parties[0].protocol is None
        ex, aborted = connect(0, cert_name=tls_name(0))
        assert not aborted and parties[0].protocol is ex
        _, aborted = connect(0, cert_name=tls_name(0))  # party 0 twice
        assert aborted == [True] and parties[0].protocol is ex
        ex1, aborted = connect(1)  # plain TCP: the claim cannot be checked, but is in range
        assert not aborted and parties[1].protocol is ex1
        scan = cls(rt)
        scan.transport = types.SimpleNamespace(abort=lambda: None, get_extra_info={}.get)
        scan.data_received(b"\x00")  # half an id, then gone: a port scan
        scan.connection_lost(None)
        assert not rt._privrec_refused.done()
    finally:
        loop.close()


def test_vectors_scaled_to_exactly_their_bound_pass_the_owners_check() -> None:
    """A row normalised to the bound in floats can compute a norm one ulp above it
    (hostile review, 2026-12-07: 4.0000000000000001 refused)."""
    rng = np.random.default_rng(11)
    p = MPCParams()
    y = rng.normal(size=(200, FACTORS))
    y *= p.item_norm_bound / np.linalg.norm(y, axis=1, keepdims=True)
    mpc._item_matrix(y, 200, FACTORS, p)
    for row in y:
        mpc._user_vector(row * p.user_norm_bound / p.item_norm_bound, FACTORS, p)
    with pytest.raises(InvalidInputError, match="item_norm_bound"):
        mpc._item_matrix(y * 1.001, 200, FACTORS, p)
