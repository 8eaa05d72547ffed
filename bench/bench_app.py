"""Benchmark the demo: predict latency, app start-up time, and many concurrent clients.

    python bench/bench_app.py --image ../shared/data/tbx11k/imgs/tb/tb0005.png

1. In-process ``Predictor.predict`` on one X-ray (already-decoded pixels excluded: the timer starts from the file's
   bytes): the app's full request (student + attention maps + TB boxes), and the same with the teacher, p50/p95.
2. Start-up: ``python app.py`` as a subprocess until its page answers.
3. Load: ``--clients`` gradio_client clients calling the ``/predict`` endpoint of that app at once, ``--requests``
   each: errors, p50/p95 round-trip latency.

Prints a table and writes JSON (default bench/results/app.json). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrdistill.inference import Predictor  # noqa: E402


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms)
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p95_ms": round(float(np.percentile(values, 95)), 2),
        "n": len(values),
    }


def time_predict(predictor: Predictor, data: bytes, repeats: int, **kwargs) -> dict[str, float]:
    for _ in range(3):
        predictor.predict(data, **kwargs)  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.predict(data, **kwargs)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(port: int, timeout: float = 120.0) -> tuple[subprocess.Popen, float]:
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while time.perf_counter() - start < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                if response.status == 200:
                    return process, time.perf_counter() - start
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the app did not answer within {timeout} s")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (``VmRSS``) or its peak so far (``VmHWM``), in MiB (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":"))) / 1024


def load_test(
    url: str,
    image: Path,
    clients: int,
    requests: int = 0,
    duration: float = 0.0,
    bad_every: int = 0,
    server_pid: int | None = None,
    expected_p_tb: float | None = None,
) -> dict:
    """``clients`` gradio_client clients calling ``/predict``: ``requests`` each, or until ``duration`` seconds.

    With ``bad_every`` = k, every k-th request of a client uploads a file that is not an X-ray and must get the
    app's clear error; any other failure, or a good request answered with another TB probability than
    ``expected_p_tb``, is a server error. With ``server_pid``, the server's resident memory is sampled after the
    100th and the 1,000th request and at the end, with its peak.
    """
    import threading

    from gradio_client import Client, handle_file

    bad = Path(tempfile.mkdtemp()) / "not-an-xray.png"
    bad.write_text("this is not an X-ray")
    lock, done, memory = threading.Lock(), [0], {}
    deadline = time.perf_counter() + duration if duration else None

    def one_client(_):
        client = Client(url, verbose=False, download_files=False)
        latencies, errors, rejected = [], [], 0
        sent = 0
        while (deadline and time.perf_counter() < deadline) or (not deadline and sent < requests):
            sent += 1
            is_bad = bad_every and sent % bad_every == 0
            start = time.perf_counter()
            try:
                result = client.predict(handle_file(str(bad if is_bad else image)), 28, api_name="/predict")
                if is_bad:
                    errors.append("a bad upload was answered")
                elif expected_p_tb is not None and abs(result["student"]["global_probs"]["tb"] - expected_p_tb) > 1e-4:
                    errors.append("wrong answer")
            except Exception as error:  # every failure is counted, whatever its type
                if is_bad and "Cannot use this file" in str(error):
                    rejected += 1
                else:
                    errors.append(f"{type(error).__name__}: {error}")
            if not is_bad:
                latencies.append((time.perf_counter() - start) * 1000)
            with lock:
                done[0] += 1
                if server_pid and done[0] in (100, 1000):
                    memory[done[0]] = round(rss_mib(server_pid), 1)
        return latencies, errors, rejected

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    wall = time.perf_counter() - start
    latencies = [x for lat, _, _ in results for x in lat]
    errors = [e for _, errs, _ in results for e in errs]
    report = {
        "clients": clients,
        "requests": done[0],
        "good_requests": len(latencies),
        "bad_uploads_rejected_clearly": sum(r for _, _, r in results),
        "server_errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "wall_s": round(wall, 1),
        "requests_per_s": round(done[0] / wall, 2),
        **percentiles(latencies),
    }
    if server_pid:
        report["server_rss_mib"] = {f"after_{k}_requests": v for k, v in sorted(memory.items())}
        report["server_rss_mib"]["at_end"] = round(rss_mib(server_pid), 1)
        report["server_rss_mib"]["peak"] = round(rss_mib(server_pid, "VmHWM"), 1)  # since the server started
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default=str(REPO.parent / "shared/data/tbx11k/imgs/tb/tb0005.png"))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5, help="requests per client")
    parser.add_argument(
        "--reliability",
        action="store_true",
        help="also the issue-8 load run: 32 clients, every 4th upload not an X-ray, server memory sampled",
    )
    parser.add_argument("--reliability-seconds", type=float, default=60.0, help="length of that run (default 60)")
    parser.add_argument("--json", default=str(REPO / "bench/results/app.json"))
    args = parser.parse_args(argv)

    image = Path(args.image)
    data = image.read_bytes()
    predictor = Predictor.from_release(REPO / "models")
    rows = {
        "predict: student 28 + attention + TB boxes": time_predict(predictor, data, args.repeats, teacher=False),
        "predict: + teacher 224 (the app's request)": time_predict(predictor, data, args.repeats),
        "predict: student 112 + attention + TB boxes": time_predict(
            predictor, data, args.repeats, resolution=112, teacher=False
        ),
    }
    process, startup = start_app(free_port())
    try:
        port = process.args[-1]
        url = f"http://127.0.0.1:{port}/"
        expected = predictor.predict(data, teacher=False, tb=False).student.global_probs["tb"]
        load = load_test(url, image, args.clients, args.requests, expected_p_tb=expected)
        reliability = (
            load_test(
                url,
                image,
                32,
                duration=args.reliability_seconds,
                bad_every=4,
                server_pid=process.pid,
                expected_p_tb=expected,
            )
            if args.reliability
            else None
        )
    finally:
        process.terminate()
        process.wait(timeout=30)

    result = {
        "image": f"{image.name} ({len(data)} bytes)",
        "tb_model": type(predictor.tb_model).__name__ if predictor.tb_model else None,
        "predict": rows,
        "startup_s": round(startup, 2),
        "load": load,
        "reliability": reliability,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
        },
    }
    print(f"{'what':<48} {'p50 ms':>8} {'p95 ms':>8}")
    for name, row in rows.items():
        print(f"{name:<48} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}")
    print(f"{'app start to ready (s)':<48} {startup:>8.2f}")
    load_name = f"{args.clients} clients x {args.requests} requests ({load['server_errors']} errors)"
    print(f"{load_name:<48} {load['p50_ms']:>8.1f} {load['p95_ms']:>8.1f}")
    if reliability:
        print("reliability run:", json.dumps(reliability))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
