"""TTSJobs applied at once: time until all are submitted and done, operator memory, API requests.

Three parts, measured apart:

- the operator: the real ``tts-operator`` command in a process of its own (Kopf, the
  kubernetes client, its default settings), so its peak RSS (VmHWM) and CPU time are its own;
- the test control plane (tests/support/cluster.py: etcd, kube-apiserver, controller-manager,
  scheduler, kwok): the API server's and etcd's CPU time are their processes' own, and every
  request the operator makes is counted from the API server's audit log by the operator's
  user (it runs with a token of the chart's ServiceAccount, under the chart's RBAC);
- a fast fake endpoint (threads of this process) that accepts every job and calls it
  succeeded on the first status query. It records every POST by its Idempotency-Key (the
  operator sends the TTSJob's uid), so the report says whether each job ran exactly once.

This process plays kubectl: it applies the TTSEndpoint (Kubernetes' controllers and kwok
complete its cache Job and make its pod Ready), then creates the TTSJobs back to back and samples
their phases every 0.5 s until all are Succeeded; then it measures one more reconcile
interval, with every job finished. The report goes to bench/out/operator.json. Linux only
(reads /proc).

    python bench/operator_bench.py [--jobs 500] [--interval 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine  # noqa: E402
from tests.cluster import build  # noqa: E402
from tests.operator.conftest import apply_chart_rbac  # noqa: E402
from tests.support.cluster import ControlPlane, Kube, install_crds, project_crds  # noqa: E402

NS = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OPERATOR = "import sys; from tts_operator.main import main; sys.exit(main(sys.argv[1:]))"


class FakeEndpoint:
    """The server's job API, instant: every POST is accepted, every job has succeeded."""

    def __init__(self) -> None:
        self.posts: dict[str, list[float]] = {}  # Idempotency-Key -> when each POST came
        self.ids: dict[str, str] = {}
        self.gets = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Idempotency-Key", "")
                with lock:
                    outer.posts.setdefault(key, []).append(time.monotonic())
                    job_id = outer.ids.setdefault(key, f"job-{len(outer.ids)}")
                self._send(202, {"id": job_id, "state": "queued"})

            def do_GET(self) -> None:
                job_id = self.path.rsplit("/", 1)[-1]
                with lock:
                    outer.gets += 1
                self._send(
                    200,
                    {
                        "id": job_id,
                        "state": "succeeded",
                        "outputUri": f"s3://bench/out/{job_id}.wav",
                        "audioSeconds": 3.0,
                        "rtf": 0.1,
                    },
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def process_figures(pid: int) -> dict[str, float]:
    """RSS now and at its peak (VmHWM), in MB, and CPU seconds, of a running process."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    # /proc/PID/stat: the command name is in parentheses; utime and stime are fields 14 and 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
        "cpu_s": (int(fields[11]) + int(fields[12])) / CLOCK_TICKS,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def read_audit(path: Path, user: str) -> list[dict[str, Any]]:
    """The audit events (one per request, at stage ResponseComplete) made by ``user``."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        event = json.loads(line)
        if event.get("stage") == "ResponseComplete" and event["user"]["username"] == user:
            out.append(event)
    return out


def requests_by_verb(events: list[dict[str, Any]], jobs: int) -> dict[str, dict[str, float]]:
    """Requests per job, by resource and verb: ``{"ttsjobs": {"patch": 2.0, ...}, ...}``."""
    counts: Counter[tuple[str, str]] = Counter()
    for event in events:
        ref = event.get("objectRef") or {}
        name = event["verb"] + (f" {ref['subresource']}" if ref.get("subresource") else "")
        counts[(ref.get("resource") or event["requestURI"], name)] += 1
    out: dict[str, dict[str, float]] = {}
    for (plural, name), count in sorted(counts.items()):
        out.setdefault(plural, {})[name] = count / jobs
    return out


def wait(
    what: str, check: Callable[[], Any], operator: subprocess.Popen[bytes], timeout: float
) -> Any:
    """Poll ``check`` (sampling progress, not synchronising work) until it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited ({operator.returncode}) while {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s while {what}")
        time.sleep(0.5)


def start_operator(
    kubeconfig: Path, fake: FakeEndpoint, tmp: Path, interval: float, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``tts-operator --namespace bench``, as the chart runs it, with the chart's RBAC."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KUBERNETES_SERVICE_", "TTS_OPERATOR_"))
    }
    env |= {"KUBECONFIG": str(kubeconfig), "TTS_OPERATOR_RECONCILE_INTERVAL": str(interval)}
    command = [
        sys.executable,
        "-c",
        OPERATOR,
        "--namespace",
        NS,
        # Every endpoint's URL is the fake server's.
        f"--endpoint-url-template={fake.url}",
        f"--metrics-port={free_port()}",
        f"--health-port={free_port()}",
    ]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)


def prepare_endpoint(kube: Kube) -> None:
    """Apply a TTSEndpoint; the cluster's controllers and kwok make it Ready."""
    secret = {"metadata": {"name": "s"}, "stringData": {"AWS_ACCESS_KEY_ID": "k"}}
    kube.create("secrets", NS, secret)
    endpoint = {
        "metadata": {"name": "fast"},
        "spec": {
            "model": {"name": "m", "source": "s3://bench/models/m/v1/"},
            "storage": {"credentialsSecret": {"name": "s"}},
            "replicas": 1,
            "resources": {"gpus": 0},
        },
    }
    kube.create("ttsendpoints", NS, endpoint)

    def ready() -> bool:
        status = (kube.get("ttsendpoints", NS, "fast") or {}).get("status") or {}
        return status.get("phase") == "Ready"

    kube.wait_for(ready, 120, "the TTSEndpoint to be Ready")


def run(jobs: int, interval: float, timeout: float) -> dict[str, Any]:
    fake = FakeEndpoint()
    with tempfile.TemporaryDirectory() as tmpdir, (Path(tmpdir) / "operator.log").open("wb") as log:
        tmp = Path(tmpdir)
        plane = ControlPlane(build.ensure(), tmp / "cluster", audit=True)
        try:
            plane.start()
            kube = plane.kube()
            install_crds(kube, project_crds())
            kube.create("namespaces", None, {"metadata": {"name": NS}})
            kube.wait_for(lambda: kube.get("serviceaccounts", NS, "default"), 30, "namespace")
            account = apply_chart_rbac(kube, NS, {"watchNamespaces": [NS]})
            kubeconfig = kube.as_token(kube.service_account_token(NS, account, 3 * 3600))
            user = f"system:serviceaccount:{NS}:{account}"
            operator = start_operator(
                kubeconfig.write_kubeconfig(tmp / "operator.kubeconfig", NS),
                fake,
                tmp,
                interval,
                log,
            )
            try:
                prepare_endpoint(kube)
                report = measure(plane, kube, user, fake, operator, jobs, interval, timeout)
            except BaseException:
                sys.stderr.write((tmp / "operator.log").read_text()[-4000:])
                raise
            finally:
                operator.send_signal(signal.SIGTERM)
                try:
                    operator.wait(30)
                except subprocess.TimeoutExpired:
                    operator.kill()
                    operator.wait()
            report["operator"]["exit_code_on_sigterm"] = operator.returncode
        finally:
            plane.stop()
    fake.close()
    return report


def measure(
    plane: ControlPlane,
    kube: Kube,
    user: str,
    fake: FakeEndpoint,
    operator: subprocess.Popen[bytes],
    jobs: int,
    interval: float,
    timeout: float,
) -> dict[str, Any]:
    load_before = os.getloadavg()
    op_before = process_figures(operator.pid)
    server_before = {name: process_figures(pid)["cpu_s"] for name, pid in plane.pids().items()}
    bench_cpu_before = time.process_time()
    requests_before = len(read_audit(plane.audit_log, user))
    start = time.monotonic()
    for i in range(jobs):
        kube.create(
            "ttsjobs",
            NS,
            {
                "metadata": {"name": f"job-{i:04d}"},
                "spec": {
                    "endpointRef": {"name": "fast"},
                    "text": f"Sentence {i}.",
                    "output": {"uri": "s3://bench/out/"},
                },
            },
        )
    created = time.monotonic() - start

    def all_succeeded() -> bool:
        phases = [(j.get("status") or {}).get("phase") for j in kube.list("ttsjobs", NS)]
        return all(phase == "Succeeded" for phase in phases)

    wait(f"waiting for {jobs} TTSJobs to succeed", all_succeeded, operator, timeout)
    done = time.monotonic() - start
    op_after = process_figures(operator.pid)
    server_cpu = {
        name: process_figures(pid)["cpu_s"] - server_before[name]
        for name, pid in plane.pids().items()
    }
    bench_cpu = time.process_time() - bench_cpu_before
    requests = read_audit(plane.audit_log, user)[requests_before:]

    # Then one reconcile interval with every job finished: what the operator spends keeping them.
    time.sleep(interval)  # a measuring window, not synchronisation
    op_idle = process_figures(operator.pid)
    idle_requests = len(read_audit(plane.audit_log, user)) - requests_before - len(requests)

    uids = {job["metadata"]["uid"] for job in kube.list("ttsjobs", NS)}
    posts_per_job = Counter(len(fake.posts.get(uid, [])) for uid in uids)
    first_posts = [fake.posts[uid][0] for uid in uids if uid in fake.posts]
    submitted = max(first_posts) - start if len(first_posts) == jobs else None
    repeat_gaps = sorted(times[1] - times[0] for times in fake.posts.values() if len(times) > 1)
    ttsjob_requests = [
        r for r in requests if (r.get("objectRef") or {}).get("resource") == "ttsjobs"
    ]
    return {
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "jobs": jobs,
        "reconcile_interval_s": interval,
        "seconds_to_create": created,
        "seconds_until_all_submitted": submitted,
        "seconds_until_all_succeeded": done,
        "endpoint": {
            "jobs_run": len(first_posts),
            "each_job_ran_exactly_once": set(fake.ids) == uids,
            "other_keys": len(set(fake.ids) - uids),
            "posts": sum(len(times) for times in fake.posts.values()),
            "jobs_by_number_of_posts": {str(k): v for k, v in sorted(posts_per_job.items())},
            "seconds_between_repeated_posts_median": repeat_gaps[len(repeat_gaps) // 2]
            if repeat_gaps
            else None,
            "status_queries": fake.gets,
        },
        "operator": {
            "rss_mb_before_jobs": op_before["rss_mb"],
            "peak_rss_mb": op_after["peak_rss_mb"],
            "rss_mb_after_jobs": op_after["rss_mb"],
            "peak_rss_mb_over_before_jobs": op_after["peak_rss_mb"] - op_before["rss_mb"],
            "cpu_seconds": op_after["cpu_s"] - op_before["cpu_s"],
            "cpu_seconds_in_one_interval_after": op_idle["cpu_s"] - op_after["cpu_s"],
            "api_requests_in_one_interval_after": idle_requests,
        },
        "control_plane": {
            "cpu_seconds": {k: round(v, 2) for k, v in server_cpu.items()},
            "operator_requests": len(requests),
            "bench_process_cpu_seconds": bench_cpu,
            "bench_process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        "ttsjob_api_requests_per_job": len(ttsjob_requests) / jobs,
        "api_requests_per_job": len(requests) / jobs,
        "api_requests_per_job_by_resource_and_verb": requests_by_verb(requests, jobs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="the operator's reconcile interval (TTS_OPERATOR_RECONCILE_INTERVAL; default 10 s)",
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="give up after this long")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "operator.json")
    args = parser.parse_args()
    report = run(args.jobs, args.interval, args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
