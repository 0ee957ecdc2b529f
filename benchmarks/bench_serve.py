"""The service under load on loopback: recommendation latency, racing analysts, dashboard render.

1. **Recommend latency.** DPALS trained through the ledger on ``ml-1m-implicit-r3`` (train.txt,
   6,039 users × 3,628 items; the raw ml-1m ratings are not in the shared data), served by
   ``privrec serve`` (its own process, default settings except the rate limit). A load
   generator (raw HTTP/1.1 keep-alive connections on asyncio, in this process) runs 1, 16 and
   64 concurrent clients, each sending ``POST /v1/recommend`` back to back with the history of a
   held-out user (``valid.txt`` users' training rows), k = 10. After a warm-up, a bounded number
   of requests per level; p50/p90/p99 and throughput. Reference in the same run: the same
   fold-in + top-k in-process, without HTTP (``ServedModel.recommend``).
2. **Racing analysts.** 32 analysts (one connection each) send top-k DP queries at ε = 0.2
   against one purpose budget of ε = 1 until refused; the overspend is the composed ε past the
   cap (must be 0) and the answers must equal what the cap holds by composition.
3. **Dashboard render.** A ledger with 10,000 committed query charges (4 analysts, 3 purposes);
   headless Chromium (Debian's, via Playwright) signs in and waits until the budget page has
   drawn its charts; median of repeats after a warm-up, as the auditor (8 budgets) and an
   analyst.

    python benchmarks/bench_serve.py [--quick] [--skip-dashboard]

Writes ``benchmarks/results/serve.{json,md}`` (``serve-quick.*`` with ``--quick``). The machine
is recorded; on the shared 2-core development machine the load generator, the server and
whatever else runs compete for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from privrec.data import load
from privrec.data.shared import shared_dataset
from privrec.governance import Ledger
from privrec.governance.policy import policy_from_dict
from privrec.models.dp_als import DPALS

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine_info, machine_markdown

RESULTS = Path(__file__).parent / "results"
LEVELS = (1, 16, 64)
_CL = re.compile(rb"content-length:\s*(\d+)", re.I)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------ set-up
def build(work: Path, quick: bool) -> dict[str, Any]:
    """Ledger, policy, keys, DPALS on ml-1m-implicit-r3 through the ledger, datasets TOML."""
    root = shared_dataset("ml-1m-implicit-r3")
    if root is None:
        raise SystemExit("needs the shared dataset ml-1m-implicit-r3 (../shared/data)")
    train = load(root / "train.txt", format="user-item-lists")
    valid = load(root / "valid.txt", format="user-item-lists")
    url = f"sqlite:///{work / 'privrec.db'}"
    owner, okey = Ledger.init(url, owner="olga")
    owner.set_policy(
        "ml1m",
        policy_from_dict(
            {
                "purpose": "recommendations",
                "unit": "user",
                "budget": {"epsilon": 50.0, "delta": 1e-6},
            }
        ),
    )
    trainer = Ledger.connect(url, owner.create_key("trainer", "analyst"))
    governed = trainer.load("ml1m", train)
    models = work / "models"
    models.mkdir()
    t0 = time.perf_counter()
    rec = trainer.train(
        DPALS(epsilon=1.0, delta=1e-6, unit="user"), governed, output=models / "dpals-ml1m.npz"
    )
    fit_s = time.perf_counter() - t0
    data_file = work / "train.tsv"
    m = train.matrix.tocoo()
    with data_file.open("w") as fh:
        fh.write("user\titem\n")
        fh.writelines(
            f"{u}\t{i}\n"
            for u, i in zip(
                np.asarray(train.user_ids)[m.row].tolist(),
                np.asarray(train.item_ids)[m.col].tolist(),
                strict=True,
            )
        )
    (work / "datasets.toml").write_text(
        '[datasets.ml1m]\nfile = "train.tsv"\nformat = "tsv"\nmax_per_user = 32\n', encoding="utf-8"
    )
    analyst_key = owner.create_key("loadtest", "analyst")
    # histories: the held-out (valid) users' training rows, as item ids
    tr_index = {str(u): i for i, u in enumerate(np.asarray(train.user_ids).tolist())}
    histories = []
    for u in np.asarray(valid.user_ids).tolist()[: 300 if quick else 2000]:
        row = tr_index.get(str(u))
        if row is None:
            continue
        cols = train.matrix[row].indices
        histories.append(
            [
                int(x) if str(x).isdigit() else str(x)
                for x in np.asarray(train.item_ids)[cols].tolist()
            ]
        )
    return {
        "url": url,
        "owner_key": okey,
        "analyst_key": analyst_key,
        "models": models,
        "histories": histories,
        "fit_seconds": fit_s,
        "model_path": rec.path,
        "n_users": train.n_users,
        "n_items": train.n_items,
        "head_items": len(rec.model.head_items_),
    }


class Server:
    """``privrec serve`` in its own process (niced like the rest of the run)."""

    def __init__(self, work: Path, url: str, models: Path) -> None:
        self.port = _free_port()
        self.log = (work / f"server-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "privrec", "serve", "--db", url, "--models", str(models),
             "--datasets", str(work / "datasets.toml"), "--port", str(self.port), "--rate-limit", "0"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{self.port}/v1/health", timeout=2).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("privrec serve did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------------------ load generator
def _request(port: int, key: str, body: dict[str, Any], path: str = "/v1/recommend") -> bytes:
    raw = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    ).encode() + raw


async def _one_client(
    port: int, requests: list[bytes], start: int, n: int, out: list[float], statuses: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i in range(n):
            msg = requests[(start + i) % len(requests)]
            t0 = time.perf_counter()
            writer.write(msg)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            m = _CL.search(head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            out.append(time.perf_counter() - t0)
            statuses.append(int(head[9:12]))
    finally:
        writer.close()


async def _level(
    port: int, requests: list[bytes], clients: int, per_client: int
) -> tuple[list[float], list[int], float]:
    lat: list[float] = []
    statuses: list[int] = []
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_one_client(port, requests, c * 97, per_client, lat, statuses) for c in range(clients))
    )
    return lat, statuses, time.perf_counter() - t0


def recommend_latency(setup: dict[str, Any], work: Path, quick: bool) -> list[dict[str, Any]]:
    server = Server(work, setup["url"], setup["models"])
    try:
        reqs = [
            _request(
                server.port, setup["analyst_key"], {"model": "dpals-ml1m", "history": h, "k": 10}
            )
            for h in setup["histories"]
        ]
        asyncio.run(_level(server.port, reqs, 4, 100))  # warm-up
        rows = []
        total = {1: 400, 16: 2400, 64: 3840} if quick else {1: 1500, 16: 8000, 64: 12800}
        for clients in LEVELS:
            lat, statuses, wall = asyncio.run(
                _level(server.port, reqs, clients, total[clients] // clients)
            )
            ms = np.array(lat) * 1e3
            rows.append(
                {
                    "clients": clients,
                    "requests": len(lat),
                    "errors": int(sum(s != 200 for s in statuses)),
                    "p50_ms": float(np.percentile(ms, 50)),
                    "p90_ms": float(np.percentile(ms, 90)),
                    "p99_ms": float(np.percentile(ms, 99)),
                    "throughput_rps": len(lat) / wall,
                }
            )
            print(
                f"  {clients:>2} clients: p50 {rows[-1]['p50_ms']:.2f} ms, p99 {rows[-1]['p99_ms']:.2f} ms, {rows[-1]['throughput_rps']:.0f} req/s",
                flush=True,
            )
    finally:
        server.stop()
    return rows


def in_process_reference(setup: dict[str, Any]) -> dict[str, float]:
    from privrec.models import load_model
    from privrec.serve.models import ServedModel

    sm = ServedModel(
        "dpals-ml1m", setup["model_path"], load_model(setup["model_path"]), "", None, None
    )
    hs = setup["histories"]
    for h in hs[:100]:
        sm.recommend(h, 10)
    lat = []
    for i in range(1500):
        t0 = time.perf_counter()
        sm.recommend(hs[i % len(hs)], 10)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


# ------------------------------------------------------------------------------ racing analysts
def race(setup: dict[str, Any], work: Path) -> dict[str, Any]:
    from privrec.governance.composition import composed_epsilon
    from privrec.privacy.units import PrivacyUnit
    from privrec.serve.analytics import noise_multiplier

    owner = Ledger.connect(setup["url"], setup["owner_key"])
    cap, eps = 1.0, 0.2
    owner.set_budget("ml1m", epsilon=cap, delta=1e-6, scope="purpose", value="race")
    keys = [owner.create_key(f"racer{i}", "analyst") for i in range(32)]
    rate = noise_multiplier(eps, 1e-6) ** -2
    fits = 0
    while composed_epsilon(rate * (fits + 1), [], 1e-6, "pld", PrivacyUnit.USER) <= cap:
        fits += 1
    server = Server(work, setup["url"], setup["models"])
    try:

        async def analyst(key: str, out: list[int]) -> None:
            msg = _request(
                server.port,
                key,
                {"epsilon": eps, "k": 5, "purpose": "race"},
                "/v1/datasets/ml1m/queries/top-k",
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                for _ in range(fits + 1):
                    writer.write(msg)
                    await writer.drain()
                    head = await reader.readuntil(b"\r\n\r\n")
                    m = _CL.search(head)
                    await reader.readexactly(int(m.group(1)) if m else 0)
                    out.append(int(head[9:12]))
                    if out[-1] != 200:
                        break
            finally:
                writer.close()

        async def everyone() -> list[int]:
            out: list[int] = []
            await asyncio.gather(*(analyst(k, out) for k in keys))
            return out

        t0 = time.perf_counter()
        statuses = asyncio.run(everyone())
        wall = time.perf_counter() - t0
    finally:
        server.stop()
    (b,) = [s for s in owner.status("ml1m") if s.scope == "purpose" and s.scope_value == "race"]
    return {
        "analysts": 32,
        "cap_epsilon": cap,
        "query_epsilon": eps,
        "answers": statuses.count(200),
        "refused": statuses.count(403),
        "other_statuses": sorted({s for s in statuses if s not in (200, 403)}),
        "fits_by_composition": fits,
        "composed_epsilon": b.composed_epsilon,
        "naive_epsilon": b.naive_epsilon,
        "overspend_epsilon": max(0.0, b.composed_epsilon - cap),
        "seconds": wall,
    }


# ------------------------------------------------------------------------------ dashboard
def dashboard(work: Path, quick: bool, repeats: int) -> dict[str, Any]:
    """A ledger with 10,000 committed query charges, rendered in Chromium."""
    from privrec.data import synthetic
    from privrec.privacy.events import SpentEvent
    from privrec.privacy.mechanisms import gaussian_event

    n_charges = 1000 if quick else 10_000
    dwork = work / "dash"
    (dwork / "models").mkdir(parents=True)
    url = f"sqlite:///{dwork / 'privrec.db'}"
    owner, _okey = Ledger.init(url, owner="olga")
    owner.set_policy(  # caps the 10,000 charges fill to roughly two thirds
        "ratings",
        policy_from_dict(
            {"purpose": "analytics", "unit": "user", "budget": {"epsilon": 300.0, "delta": 1e-6}}
        ),
    )
    analysts = [Ledger.connect(url, owner.create_key(f"analyst{i}", "analyst")) for i in range(4)]
    for i in range(4):
        owner.set_budget("ratings", epsilon=100.0, delta=1e-6, scope="analyst", value=f"analyst{i}")
    for p in ("analytics", "marketing", "research"):
        owner.set_budget("ratings", epsilon=130.0, delta=1e-6, scope="purpose", value=p)
    auditor_key = owner.create_key("dora", "auditor")
    data = synthetic(n_users=300, n_items=100, seed=0)
    for a in analysts:
        a.load("ratings", data)
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    for i in range(n_charges):
        a = analysts[i % 4]
        z = float(rng.choice([4.2, 8.1, 30.7]))
        c = a.reserve("ratings", [SpentEvent("top_k query (Gaussian)", gaussian_event(z))],
                      purpose=("analytics", "marketing", "research")[i % 3], kind="query")  # fmt: skip
        a.commit(c, result={"items": []})
    fill_s = time.perf_counter() - t0
    (work / "dash" / "datasets.toml").write_text("", encoding="utf-8")
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    server = _DashServer(dwork, url)
    out: dict[str, Any] = {"charges": n_charges, "ledger_fill_seconds": fill_s}
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
            ctx = p.chromium.launch_persistent_context(
                profile, executable_path="/usr/bin/chromium", headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            )  # fmt: skip
            try:
                for who, key in (
                    ("auditor", auditor_key),
                    ("analyst", owner.create_key("viewer", "analyst")),
                ):
                    times = []
                    for r in range(repeats + 1):
                        page = ctx.new_page()
                        t0 = time.perf_counter()
                        page.goto(f"http://127.0.0.1:{server.port}/dashboard/")
                        page.fill("#key", key)
                        page.click("#login")
                        page.wait_for_selector("body[data-budgets-rendered='1']", timeout=60_000)
                        dt = time.perf_counter() - t0
                        if r:  # the first is the warm-up (browser cache, server caches)
                            times.append(dt)
                        if who == "auditor" and r == repeats:
                            page.screenshot(path=str(work / "dashboard-10k.png"), full_page=True)
                        page.close()
                    out[who] = {
                        "median_s": statistics.median(times),
                        "max_s": max(times),
                        "runs": times,
                    }
                    print(f"  dashboard as {who}: median {out[who]['median_s']:.2f} s", flush=True)
            finally:
                ctx.close()
    finally:
        server.stop()
    return out


class _DashServer(Server):
    def __init__(self, work: Path, url: str) -> None:
        super().__init__(work, url, work / "models")


# ------------------------------------------------------------------------------ report
def _load(res: dict[str, Any], when: str) -> str:
    v = res.get(f"load_average_at_{when}")
    return "not recorded" if not v else f"{v[0]:.1f}"


def markdown(res: dict[str, Any]) -> str:
    s = res["setup"]
    lines = [
        "# privrec serve under load (loopback)",
        "",
        f"Model: DPALS (ε = 1, δ = 1e-6, user level) trained through the ledger on `ml-1m-implicit-r3` "
        f"train.txt ({s['n_users']:,} users × {s['n_items']:,} items, {s['head_items']:,} head items released; "
        f"fit {s['fit_seconds']:.0f} s). `privrec serve` in its own process, defaults except `--rate-limit 0`; "
        "the load generator (raw HTTP/1.1 keep-alive, asyncio) runs in the benchmark process on the same "
        "machine. Each request: `POST /v1/recommend` with a held-out user's history (fold-in), k = 10.",
        "",
        "**The machine was shared** (2 cores, other engineers' jobs running; 1-minute load average "
        f"{_load(res, 'start')} at the start, {_load(res, 'end')} at the end): the server, the load "
        "generator and everything else compete for the same two cores, so these are upper bounds.",
        "",
        "| concurrent clients | requests | errors | p50 (ms) | p90 (ms) | p99 (ms) | throughput (req/s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["recommend"]:
        lines.append(
            f"| {r['clients']} | {r['requests']:,} | {r['errors']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['throughput_rps']:.0f} |"
        )
    ref = res["in_process"]
    sixteen = next(r for r in res["recommend"] if r["clients"] == 16)
    lines += [
        "",
        f"Reference, same run: the same fold-in + top-k in-process without HTTP: p50 {ref['p50_ms']:.2f} ms, "
        f"p99 {ref['p99_ms']:.2f} ms.",
        "",
        f"Target p99 ≤ 25 ms at 16 concurrent clients: **{'met' if sixteen['p99_ms'] <= 25 else 'not met'}** "
        f"({sixteen['p99_ms']:.1f} ms).",
        "",
        "## 32 analysts racing one budget",
        "",
    ]
    rc = res["race"]
    lines += [
        f"Purpose budget ε = {rc['cap_epsilon']}, each query ε = {rc['query_epsilon']} (top-k, Gaussian): "
        f"{rc['answers']} answers, {rc['refused']} refusals (other statuses: {rc['other_statuses'] or 'none'}); "
        f"the cap holds {rc['fits_by_composition']} such queries by composition. Composed ε spent "
        f"{rc['composed_epsilon']:.4f} (naive Σε {rc['naive_epsilon']:.2f}); **overspend "
        f"{rc['overspend_epsilon']:.4f}**. {rc['seconds']:.1f} s.",
    ]
    if "dashboard" in res:
        d = res["dashboard"]
        lines += [
            "",
            f"## Dashboard render with {d['charges']:,} charges",
            "",
            "Headless Chromium (Debian's), from navigation to the budget page's charts drawn "
            "(sign-in, `/v1/me`, `/v1/datasets`, `/v1/budgets?series=true`, `/v1/charges`, plotly); "
            f"median of {len(d['auditor']['runs'])} after a warm-up. Target < 2 s.",
            "",
            "| who | budgets shown | median (s) | max (s) |",
            "| --- | ---: | ---: | ---: |",
            f"| auditor | 8 | {d['auditor']['median_s']:.2f} | {d['auditor']['max_s']:.2f} |",
            f"| analyst | 4 | {d['analyst']['median_s']:.2f} | {d['analyst']['max_s']:.2f} |",
        ]
    lines += [
        "",
        "Command: `nice -n 10 python benchmarks/bench_serve.py`.",
        "",
        machine_markdown(res["machine"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-dashboard", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("training DPALS on ml-1m-implicit-r3 through the ledger…", flush=True)
        setup = build(work, args.quick)
        res: dict[str, Any] = {
            "machine": machine_info(),
            "quick": args.quick,
            "load_average_at_start": os.getloadavg(),
        }
        print("recommend latency:", flush=True)
        res["recommend"] = recommend_latency(setup, work, args.quick)
        res["in_process"] = in_process_reference(setup)
        print("racing analysts:", flush=True)
        res["race"] = race(setup, work)
        print(
            f"  answers {res['race']['answers']} (fits {res['race']['fits_by_composition']}), overspend {res['race']['overspend_epsilon']}",
            flush=True,
        )
        res["setup"] = {k: setup[k] for k in ("fit_seconds", "n_users", "n_items", "head_items")}
        if not args.skip_dashboard:
            print("dashboard:", flush=True)
            res["dashboard"] = dashboard(work, args.quick, args.repeats)
            shot = work / "dashboard-10k.png"
            if shot.exists():
                (
                    RESULTS / ("serve-dashboard-quick.png" if args.quick else "serve-dashboard.png")
                ).write_bytes(shot.read_bytes())
    res["load_average_at_end"] = os.getloadavg()
    name = "serve-quick" if args.quick else "serve"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
    (RESULTS / f"{name}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
