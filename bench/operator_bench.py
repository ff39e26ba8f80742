"""500 TTSJobs applied at once: time until all are submitted and done, peak memory, API requests per job.

The operator runs under the real Kopf runtime against the emulated API server
the tests use (tests/support/kube_emulator.py), with a fast fake endpoint that
accepts every job and reports it succeeded on the first status query.

    python bench/operator_bench.py [--jobs 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("TTS_OPERATOR_RECONCILE_INTERVAL", "10")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kopf  # noqa: E402
import kubernetes.config.kube_config  # noqa: E402
from tests.support.kube_emulator import ApiServer, OperatorRunner, load_manifests  # noqa: E402

from tts_operator import config  # noqa: E402
from tts_operator import main as operator_main  # noqa: E402, F401  (registers the handlers)

NS = "bench"


class FakeEndpoint:
    """Accepts every job (idempotent by key) and calls it succeeded when asked."""

    def __init__(self) -> None:
        self.jobs: dict[str, str] = {}
        self.posts = 0
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
                    outer.posts += 1
                    job_id = outer.jobs.setdefault(key, f"job-{len(outer.jobs)}")
                self._send(202, {"id": job_id, "state": "queued"})

            def do_GET(self) -> None:
                job_id = self.path.rsplit("/", 1)[-1]
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "operator.json")
    args = parser.parse_args()
    fake = FakeEndpoint()
    crds = load_manifests(sorted((ROOT / "crds").glob("*.yaml")))
    with ApiServer(crds=crds, namespaces=[NS]) as api, tempfile.TemporaryDirectory() as tmp:
        kubeconfig = api.write_kubeconfig(Path(tmp) / "kubeconfig", namespace=NS)
        os.environ["KUBECONFIG"] = str(kubeconfig)
        kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(kubeconfig)
        api.create(
            "secrets",
            NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s"},
                "stringData": {"AWS_ACCESS_KEY_ID": "k"},
            },
        )
        endpoint = {
            "apiVersion": "tts.f5tts.dev/v1alpha1",
            "kind": "TTSEndpoint",
            "metadata": {"name": "fast"},
            "spec": {
                "model": {"name": "m", "source": "s3://bench/models/m/v1/"},
                "storage": {"credentialsSecret": {"name": "s"}},
                "replicas": 1,
            },
        }
        # Every endpoint URL points at the fake server.
        settings = config.Settings(namespaces=(NS,), endpoint_url_template=fake.url)
        runner = OperatorRunner(namespaces=[NS], memo=kopf.Memo(settings=settings))
        before_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        runner.start()
        api.create("ttsendpoints", NS, endpoint)
        job = api.wait_for(lambda: api.objects("jobs", NS) or None, timeout=60)[0]
        api.complete_job(NS, job["metadata"]["name"])
        api.wait_for(
            lambda: (api.get("deployments", NS, "fast") or {}).get("spec", {}).get("replicas") == 1,
            timeout=60,
        )
        api.mark_deployment_available(NS, "fast")
        api.wait_for(
            lambda: ((api.get("ttsendpoints", NS, "fast") or {}).get("status") or {}).get("phase")
            == "Ready",
            timeout=60,
        )
        requests_before = len(api.requests)
        start = time.monotonic()
        for i in range(args.jobs):
            api.create(
                "ttsjobs",
                NS,
                {
                    "apiVersion": "tts.f5tts.dev/v1alpha1",
                    "kind": "TTSJob",
                    "metadata": {"name": f"job-{i:04d}"},
                    "spec": {
                        "endpointRef": {"name": "fast"},
                        "text": f"Sentence {i}.",
                        "output": {"uri": "s3://bench/out/"},
                    },
                },
            )
        created = time.monotonic() - start

        def phases() -> dict[str, int]:
            out: dict[str, int] = {}
            for job in api.objects("ttsjobs", NS):
                phase = (job.get("status") or {}).get("phase", "None")
                out[phase] = out.get(phase, 0) + 1
            return out

        submitted_at = None
        while True:
            p = phases()
            if submitted_at is None and len(fake.jobs) >= args.jobs:
                submitted_at = time.monotonic() - start
            if p.get("Succeeded", 0) >= args.jobs:
                break
            if time.monotonic() - start > 1200:
                raise SystemExit(f"not done after 20 min: {p}")
            time.sleep(0.5)  # sampling progress, not synchronising work
        done = time.monotonic() - start
        job_requests = [r for r in api.requests[requests_before:] if r.plural == "ttsjobs"]
        runner.stop()
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "jobs": args.jobs,
        "seconds_to_create": created,
        "seconds_until_all_submitted": submitted_at,
        "seconds_until_all_succeeded": done,
        "server_posts": fake.posts,
        "server_jobs": len(fake.jobs),
        "ttsjob_api_requests_per_job": len(job_requests) / args.jobs,
        "peak_rss_mb_process": peak_rss_mb,
        "rss_mb_before_operator": before_rss / 1024,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
