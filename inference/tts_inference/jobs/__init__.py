"""Asynchronous synthesis jobs: long text in, one audio object in the bucket out.

A job runs as an asyncio task owned by the app's lifespan. It reads its text
(inline or from an allowed ``s3://`` URI), splits it as F5-TTS does, and feeds
the chunks through the same batching queue as live requests, on the JOB lane:
live requests always go first, and a job keeps at most ``window`` chunks in the
queue (shared by all jobs), so it can never fill the queue against live
traffic. Chunks are cross-faded and encoded as they arrive into a temporary
file (memory stays flat for a chapter), which is uploaded to the final key
with ``upload_file``: one PUT or a multipart upload whose completion is
atomic, aborted on failure. So the object is whole or absent, and only after
it exists is the job marked succeeded.

Job ids and restarts. With an ``Idempotency-Key`` the id is derived from the
key (``sha256("tts-job\\0" + key)[:32]``), so every replica and every restart
maps a key to the same id without coordination. The job's record is written
to ``<jobs-uri>/<id>.json`` at each state change and every
``heartbeat_seconds`` while it runs, so a GET on any replica, or after a
restart, finds it by id alone (the output URI is chosen per job and cannot be
found from the id). A result record ``<output-key>.tts-job.json`` is written
beside the audio after the audio exists, and the audio carries the job id in
its metadata: a job whose index record is missing or stale but whose output
exists is reported succeeded, never failed.

The same key never runs twice: a repeated POST returns the existing job, here
or from the bucket. The one exception is a run that never finished (the
server stopped, or its heartbeats went stale): it is reported failed with
``retryable: true``, and a POST with the same key runs it again (``attempts``
counts the runs), which cannot produce a second output because the first
never wrote one.

One pipeline, two callers. The server submits jobs as tasks; ``tts-inference
run-job`` (a batch TTSJob pod) runs one job in the foreground through the same
``JobManager``: ``prepare`` (validation), ``finished`` (idempotency),
``gather`` (text and voice, before any model is loaded) and ``run``. A job's
voice is a registered voice's name or its own reference clip
(``{"refAudio", "refText"}``, see ``VoiceStore.reference``).

Parts. A run-job pod of an Indexed Job with N pods (``parts``) splits the
whole text into the same chunk list as every other pod, synthesizes its
contiguous share (part I gets chunks ``[I*n//N, (I+1)*n//N)``, each with seed
``seed + global chunk index``), cross-faded but not clipped, and uploads it as
a float32 wav to ``<output key>.parts/<I>-of-<N>.wav``, tagged with the
request's fingerprint and the chunk plan's digest. It then lists the parts:
when all N of this request are there it joins them in order with the same
cross-fade as between chunks (so the result equals a one-part run), encodes
the requested format, uploads the output and its result record and deletes the
parts; otherwise it leaves the join to the pod that finishes last. A part that
exists with the same fingerprint is never synthesized again.

The package, by concern: ``manager`` (submission, lookup, cancelling, the
run of a job), ``records`` (ids, index and result records, heartbeats'
writes, cancel markers), ``parts`` (an Indexed Job's parts), ``sink`` (the
audio file a job writes), ``job`` (the job, its settings and failure).
"""

from tts_inference.jobs.job import Job, JobFailed, JobSettings, finish_in_thread
from tts_inference.jobs.manager import JobManager
from tts_inference.jobs.parts import part_uri, parts_prefix, plan_digest, share
from tts_inference.jobs.records import RESULT_SUFFIX, job_id_for, valid_job_id

__all__ = [
    "RESULT_SUFFIX",
    "Job",
    "JobFailed",
    "JobManager",
    "JobSettings",
    "finish_in_thread",
    "job_id_for",
    "part_uri",
    "parts_prefix",
    "plan_digest",
    "share",
    "valid_job_id",
]
