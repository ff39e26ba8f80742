"""The voice registry: the packaged `default`, the cache volume's voices/, and the bucket.

Layout (DESIGN.md):

- bucket: ``<voices-uri>/<name>/ref-<sha256[:16]>.wav`` (24 kHz mono 16-bit) and
  ``<voices-uri>/<name>/voice.json`` (text, seconds, sha256, the audio's key),
  written last: a voice exists in the bucket exactly when its voice.json does.
  Naming the audio by its digest keeps voice.json and its audio consistent even
  when two replicas race on one name (the last voice.json wins, whole).
- cache: ``/cache/voices/<name>/ref.wav``, ``ref.txt`` and ``voice.json``, made
  in a hidden folder and renamed into place, so a folder is whole or absent. A
  folder made by hand with ``ref.wav`` and ``ref.txt`` is a voice too.

A voice missing from the cache is fetched from the bucket under an
inter-process lock (``/cache/.locks/voice-<name>.lock``), so replicas sharing
a volume download it once. Loaded voices are kept in memory (LRU); those that
came from the bucket are checked against it (a HEAD of voice.json) at most
every ``revalidate_seconds``, so a voice deleted or replaced through another
replica stops being served from a stale cache.

A job may bring its own reference clip instead of a voice name
(``reference``): an ``s3://`` object, prepared exactly as an uploaded voice
(``prepare``). Prepared clips are cached by the sha256 of the clip's bytes,
``/cache/voices/.clips/<sha256>/ref.wav`` (and ``asr.txt`` once transcribed),
with an index from the object (URI, ETag, size) to that hash under
``.clips/sources/``, so a replica fetches and prepares one clip once however
many jobs use it; the hidden folder is never listed as a voice.

Every method blocks (ffmpeg, the bucket, flock); the async layers call them
through ``asyncio.to_thread``. ``cached`` is the non-blocking fast path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

from tts_inference import audio
from tts_inference.engine.base import SAMPLE_RATE, Audio, Voice
from tts_inference.errors import BadRequest, Unavailable
from tts_inference.metrics import ServerMetrics
from tts_inference.refaudio import prepare_reference
from tts_inference.sizes import MIB
from tts_inference.storage.bucket import ObjectStore, S3Uri, StorageError
from tts_inference.storage.files import file_lock, write_atomic

log = logging.getLogger("tts_inference.voices")

PACKAGE_VOICES = Path(__file__).parent / "voices"
DEFAULT = "default"
NAME_RULE = "1 to 64 letters, digits, '-' or '_', starting with a letter or digit"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
META = "voice.json"
CLIPS = ".clips"  # under the voices folder: job-level reference clips by content hash
CLIP_PARAM = "voice.refAudio"
PROBE_RATE = 2000  # the cheap first decode that measures the duration

#: A speech recogniser: (24 kHz mono float32 audio, sample rate) -> transcript.
Transcriber = Callable[[Audio, int], str]


#: The environment variable the server and run-job read voice aliases from.
ALIASES_ENV = "TTS_VOICE_ALIASES"
#: OpenAI's built-in voice names: an unchanged OpenAI program asks for these.
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx",
    "nova", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip


def default_aliases() -> dict[str, str]:
    """Each OpenAI voice name speaks with the built-in voice until mapped elsewhere."""
    return dict.fromkeys(OPENAI_VOICES, DEFAULT)


def parse_aliases(specs: Iterable[str], param: str = "--voice-alias") -> dict[str, str]:
    """``alias=voice`` items (also comma-separated) over the defaults; ValueError names the bad one."""
    aliases = default_aliases()
    for spec in specs:
        for item in filter(None, (part.strip() for part in spec.split(","))):
            alias, sep, voice = (s.strip() for s in item.partition("="))
            if not sep or not valid_name(alias) or not valid_name(voice):
                raise ValueError(f"{param} {item!r}: expected ALIAS=VOICE, each {NAME_RULE}")
            if alias == DEFAULT:
                raise ValueError(f"{param} {item!r}: 'default' is the built-in voice's own name")
            aliases[alias] = voice
    return aliases


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def check_name(name: str, param: str = "name") -> str:
    if not valid_name(name):
        raise BadRequest(f"invalid voice name {name!r}: use {NAME_RULE}", param=param)
    return name


@dataclass(frozen=True)
class VoiceLimits:
    max_upload_bytes: int = 10 * 1000 * 1000
    max_seconds: float = 300.0
    min_speech_seconds: float = 1.0
    max_text_chars: int = 2000
    revalidate_seconds: float = 30.0
    memory_voices: int = 64


@dataclass
class _Entry:
    voice: Voice
    info: dict[str, Any]
    checked: float  # monotonic time of the last check against the bucket


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _read_wav(path: Path) -> Audio:
    """Our own 24 kHz mono wav through soundfile; anything else through ffmpeg."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        if rate == SAMPLE_RATE and data.shape[1] == 1:
            return np.ascontiguousarray(data[:, 0], dtype=np.float32)
    except (RuntimeError, sf.LibsndfileError):
        pass
    return audio.decode(path.read_bytes())


class VoiceStore:
    def __init__(
        self,
        voices_dir: Path | None,
        *,
        remote: S3Uri | None = None,
        objects: ObjectStore | None = None,
        metrics: ServerMetrics | None = None,
        transcriber: Transcriber | None = None,
        limits: VoiceLimits | None = None,
        lock_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        if remote is not None and (objects is None or voices_dir is None):
            raise ValueError("a voices bucket needs an ObjectStore and a local voices folder")
        self.voices_dir = voices_dir
        self.remote = remote
        self.objects = objects
        self.metrics = metrics
        self.transcriber = transcriber
        self.limits = limits or VoiceLimits()
        self.lock_dir = lock_dir or (voices_dir.parent / ".locks" if voices_dir else None)
        self.clock = clock
        #: alias -> voice: a request for the alias speaks with the voice.
        self.aliases: dict[str, str] = default_aliases() if aliases is None else dict(aliases)
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self._holds: Counter[str] = Counter()
        self._lock = threading.Lock()
        # Reference clips: content hash -> prepared audio; object (URI, ETag, size) -> hash.
        self._clips: OrderedDict[str, Audio] = OrderedDict()
        self._clip_sources: OrderedDict[str, str] = OrderedDict()
        self._clip_texts: dict[str, str] = {}

    # ------------------------------------------------------------------ reading

    def names(self) -> list[str]:
        """Every voice: the default, the cache's and (when configured) the bucket's."""
        names = {DEFAULT}
        if self.voices_dir and self.voices_dir.is_dir():
            names |= {p.name for p in self.voices_dir.iterdir() if self._local_complete(p.name)}
        if self.remote is not None and self.objects is not None:
            try:
                keys = self.objects.list_keys(self.remote)
            except StorageError as exc:
                log.warning("listing voices in the bucket failed, listing the cache only: %s", exc)
            else:
                for key in keys:
                    parts = key[len(self.remote.prefix) :].split("/")
                    if len(parts) == 2 and parts[1] == META and valid_name(parts[0]):
                        names.add(parts[0])
        return sorted(names)

    def resolve(self, name: str) -> str:
        """The voice a name speaks with: an alias's voice, else the name itself."""
        return self.aliases.get(name, name)

    def aliases_of(self, name: str) -> list[str]:
        return sorted(alias for alias, voice in self.aliases.items() if voice == name)

    def cached(self, name: str) -> Voice | None:
        """The voice when it is in memory and needs no check against the bucket; never blocks."""
        name = self.resolve(name)
        with self._lock:
            entry = self._memory.get(name)
            if entry is None or self._needs_check(entry):
                return None
            self._memory.move_to_end(name)
        self._hit()
        return entry.voice

    def get(self, name: str) -> Voice:
        """The voice by name or alias, fetched from the bucket once if the cache lacks it; 404 if none."""
        return self._load_named(name).voice

    def info(self, name: str) -> dict[str, Any]:
        entry = self._load_named(name)
        return {**entry.info, "aliases": self.aliases_of(str(entry.info["name"]))}

    def _load_named(self, name: str) -> _Entry:
        voice = self.resolve(name)
        if voice == name:
            return self._load(name)
        try:
            return self._load(voice)
        except BadRequest as exc:
            if exc.status != 404:
                raise
            raise BadRequest(
                f"voice {name!r} is an alias of {voice!r}, which does not exist; register "
                f"{voice!r} or map {name!r} to another voice; available: {', '.join(self.names())}",
                param="voice",
                status=404,
            ) from None

    def _needs_check(self, entry: _Entry) -> bool:
        return (
            self.remote is not None
            and entry.info.get("etag") is not None
            and self.clock() - entry.checked > self.limits.revalidate_seconds
        )

    def _hit(self) -> None:
        if self.metrics is not None:
            self.metrics.voice_cache_hits.inc()

    def _miss(self) -> None:
        if self.metrics is not None:
            self.metrics.voice_cache_misses.inc()

    def _unknown(self, name: str) -> BadRequest:
        return BadRequest(
            f"unknown voice {name!r}; available: {', '.join(self.names())}",
            param="voice",
            status=404,
        )

    def _remember(self, name: str, entry: _Entry) -> _Entry:
        with self._lock:
            self._memory[name] = entry
            self._memory.move_to_end(name)
            while len(self._memory) > max(self.limits.memory_voices, 1):
                self._memory.popitem(last=False)
        return entry

    def _forget(self, name: str) -> None:
        with self._lock:
            self._memory.pop(name, None)

    def _load(self, name: str) -> _Entry:
        if name == DEFAULT:
            with self._lock:
                entry = self._memory.get(DEFAULT)
            if entry is None:
                # Prepared as every voice is (and as f5-tts prepares a reference clip):
                # an untrimmed clip would lengthen every request's audio and its compute.
                wav = prepare_reference(_read_wav(PACKAGE_VOICES / "default.wav"), SAMPLE_RATE)
                voice = Voice(DEFAULT, wav, (PACKAGE_VOICES / "default.txt").read_text().strip())
                info = {
                    "name": DEFAULT,
                    "text": voice.text,
                    "seconds": round(len(voice.audio) / SAMPLE_RATE, 3),
                    "sampleRate": SAMPLE_RATE,
                    "builtin": True,
                }
                entry = self._remember(DEFAULT, _Entry(voice, info, self.clock()))
            self._hit()
            return entry
        if not valid_name(name):
            raise self._unknown(name)
        with self._lock:
            entry = self._memory.get(name)
        if entry is None:
            # Read from the cache volume: when it came from the bucket, check it once.
            local = self._read_local(name, checked=float("-inf"))
            if local is not None:
                entry = self._remember(name, local)
        if entry is not None:
            if not self._needs_check(entry):
                self._hit()
                return entry
            fresh = self._revalidate(name, entry)
            if fresh is not None:
                self._hit()
                return fresh
        if self.remote is None:
            raise self._unknown(name)
        self._miss()
        fetched = self._fetch(name)
        if fetched is None:
            raise self._unknown(name)
        return self._remember(name, fetched)

    def _revalidate(self, name: str, entry: _Entry) -> _Entry | None:
        """The entry if the bucket still holds the same voice.json (or cannot be asked)."""
        remote, objects = self._bucket()
        try:
            head = objects.head(remote.join(name, META))
        except StorageError as exc:
            log.warning(
                "could not check voice %r against the bucket, using the cache: %s", name, exc
            )
            entry.checked = self.clock()
            return entry
        if head is not None and head.etag == entry.info.get("etag"):
            entry.checked = self.clock()
            return entry
        log.info("voice %r changed or went away in the bucket; dropping the cached copy", name)
        self._forget(name)
        with self._name_lock(name):
            if self._read_local_meta(name).get("etag") == entry.info.get("etag"):
                self._remove_local(name)
        return None

    # ------------------------------------------------------------------ the cache folder

    def _folder(self, name: str) -> Path:
        assert self.voices_dir is not None
        return self.voices_dir / name

    def _local_complete(self, name: str) -> bool:
        if self.voices_dir is None or not valid_name(name):
            return False
        folder = self._folder(name)
        return (folder / "ref.wav").is_file() and (folder / "ref.txt").is_file()

    def _read_local_meta(self, name: str) -> dict[str, Any]:
        if self.voices_dir is None:
            return {}
        try:
            meta = json.loads((self._folder(name) / META).read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _read_local(self, name: str, checked: float | None = None) -> _Entry | None:
        if not self._local_complete(name):
            return None
        folder = self._folder(name)
        try:
            samples = _read_wav(folder / "ref.wav")
            text = (folder / "ref.txt").read_text().strip()
        except (OSError, audio.AudioError) as exc:
            log.warning("voice %r in the cache is unreadable: %s", name, exc)
            return None
        meta = self._read_local_meta(name)
        info = {
            "name": name,
            "text": text,
            "seconds": round(len(samples) / SAMPLE_RATE, 3),
            "sampleRate": SAMPLE_RATE,
            "builtin": False,
            **{k: meta[k] for k in ("sha256", "createdAt", "etag") if k in meta},
        }
        return _Entry(
            Voice(name, samples, text), info, self.clock() if checked is None else checked
        )

    def _write_local(self, name: str, wav: bytes, text: str, meta: dict[str, Any]) -> None:
        """Make the folder whole in a hidden sibling, then rename it into place."""
        folder = self._folder(name)
        tmp = folder.with_name(f".{name}.tmp.{os.getpid()}.{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            write_atomic(tmp / "ref.wav", wav)
            write_atomic(tmp / "ref.txt", text.encode())
            write_atomic(tmp / META, json.dumps(meta, indent=1).encode())
            self._remove_local(name)
            os.rename(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _remove_local(self, name: str) -> None:
        folder = self._folder(name)
        if folder.exists():
            gone = folder.with_name(f".{name}.deleted.{os.getpid()}.{threading.get_ident()}")
            os.rename(folder, gone)
            shutil.rmtree(gone, ignore_errors=True)

    @contextlib.contextmanager
    def _name_lock(self, name: str) -> Iterator[None]:
        if self.lock_dir is None:
            yield
            return
        with file_lock(self.lock_dir / f"voice-{name}.lock", f"voice {name!r}", sys.stderr):
            yield

    # ------------------------------------------------------------------ the bucket

    def _bucket(self) -> tuple[S3Uri, ObjectStore]:
        if self.remote is None or self.objects is None:
            raise RuntimeError("this voice store has no bucket")
        return self.remote, self.objects

    def _fetch(self, name: str) -> _Entry | None:
        """Fetch a voice from the bucket into the cache, once across processes; None if absent."""
        remote, objects = self._bucket()
        with self._name_lock(name):
            local = self._read_local(name)  # another process may have fetched it meanwhile
            if local is not None:
                return local
            meta_uri = remote.join(name, META)
            try:
                raw, etag = objects.get(meta_uri, 1 * MIB)
            except StorageError as exc:
                if exc.missing:
                    return None
                raise Unavailable(f"could not read voice {name!r} from the bucket: {exc}") from None
            try:
                meta = json.loads(raw)
                audio_name = str(meta["audio"])
                text = str(meta["text"])
                digest = str(meta["sha256"])
                if "/" in audio_name or not audio_name.endswith(".wav"):
                    raise ValueError(f"bad audio name {audio_name!r}")
            except (ValueError, KeyError, TypeError) as exc:
                raise Unavailable(f"{meta_uri} is not a valid voice record: {exc}") from None
            try:
                wav = objects.get_bytes(remote.join(name, audio_name), 64 * MIB)
            except StorageError as exc:
                raise Unavailable(f"could not read voice {name!r} from the bucket: {exc}") from None
            if hashlib.sha256(wav).hexdigest() != digest:
                raise Unavailable(
                    f"voice {name!r} in the bucket does not match its sha256 (being replaced?); retry"
                )
            self._write_local(name, wav, text, {**meta, "etag": etag})
            log.info("voice %r fetched from %s (%d bytes)", name, remote.join(name), len(wav))
            local = self._read_local(name)
            if local is None:
                raise Unavailable(f"voice {name!r} could not be written to the cache")
            return local

    def _exists(self, name: str) -> bool:
        if name == DEFAULT or self._local_complete(name):
            return True
        if self.remote is None or self.objects is None:
            return False
        try:
            return self.objects.head(self.remote.join(name, META)) is not None
        except StorageError as exc:
            raise Unavailable(f"could not check voice {name!r} in the bucket: {exc}") from None

    # ------------------------------------------------------------------ job reference clips

    def reference(self, uri: S3Uri, text: str | None = None, *, transcribe: bool = True) -> Voice:
        """A job's own reference clip from the bucket, prepared as registered voices are.

        The words spoken come from ``text``, else from the speech recognition model
        (once per clip); with neither it is a 400. ``transcribe=False`` only checks
        (fetches and prepares the clip, refuses a missing transcript when no model
        could make one) and may return the voice with empty text. Errors: BadRequest
        for what a retry cannot fix (bad or missing object, 403, undecodable audio),
        Unavailable for the bucket failing otherwise.
        """
        text = (text or "").strip()
        if len(text) > self.limits.max_text_chars:
            raise BadRequest(
                f"refText is {len(text)} characters; the limit is {self.limits.max_text_chars}",
                "voice.refText",
            )
        digest, samples = self._clip(uri)
        if not text:
            text = self._clip_transcript(digest, samples, transcribe)
        return Voice(f"clip-{digest[:12]}", samples, text)

    def _clip_error(self, uri: S3Uri, exc: StorageError) -> BadRequest | Unavailable:
        if exc.permanent:
            return BadRequest(f"could not read refAudio {uri}: {exc}", CLIP_PARAM)
        return Unavailable(f"could not read refAudio {uri}: {exc}", CLIP_PARAM)

    def _clips_dir(self) -> Path | None:
        return self.voices_dir / CLIPS if self.voices_dir is not None else None

    def _remember_clip(self, source: str, digest: str, samples: Audio) -> None:
        with self._lock:
            self._clips[digest] = samples
            self._clips.move_to_end(digest)
            while len(self._clips) > max(self.limits.memory_voices, 1):
                self._clips.popitem(last=False)
            self._clip_sources[source] = digest
            self._clip_sources.move_to_end(source)
            while len(self._clip_sources) > 16 * max(self.limits.memory_voices, 1):
                self._clip_sources.popitem(last=False)

    def _read_clip(self, digest: str) -> Audio | None:
        folder = self._clips_dir()
        if folder is None or not (folder / digest / "ref.wav").is_file():
            return None
        try:
            return _read_wav(folder / digest / "ref.wav")
        except (OSError, audio.AudioError) as exc:
            log.warning("reference clip %s in the cache is unreadable: %s", digest[:12], exc)
            return None

    def _clip_from_cache(self, source: str) -> tuple[str, Audio] | None:
        with self._lock:
            digest = self._clip_sources.get(source)
            samples = self._clips.get(digest) if digest is not None else None
        if digest is not None and samples is not None:
            return digest, samples
        folder = self._clips_dir()
        if folder is None:
            return None
        try:
            digest = (folder / "sources" / source).read_text().strip()
        except OSError:
            return None
        samples = self._read_clip(digest) if len(digest) == 64 else None
        return (digest, samples) if samples is not None else None

    def _clip(self, uri: S3Uri) -> tuple[str, Audio]:
        """(sha256 of the clip's bytes, prepared audio): fetched and prepared once per cache."""
        if self.objects is None:
            raise BadRequest(
                "this server has no bucket access for refAudio: start it with --allowed-buckets",
                CLIP_PARAM,
            )
        try:
            head = self.objects.head(uri)
        except StorageError as exc:
            raise self._clip_error(uri, exc) from None
        if head is None:
            raise BadRequest(
                f"could not read refAudio {uri}: 404 not found: check the bucket and key",
                CLIP_PARAM,
            )
        if head.size > self.limits.max_upload_bytes:
            raise BadRequest(
                f"refAudio {uri} is {head.size} bytes; the limit is {self.limits.max_upload_bytes}",
                CLIP_PARAM,
            )
        source = hashlib.sha256(f"{uri}\0{head.etag}\0{head.size}".encode()).hexdigest()
        found = self._clip_from_cache(source)
        if found is not None:
            self._hit()
            self._remember_clip(source, *found)
            return found
        with self._name_lock(f"clip-{source[:32]}"):
            found = self._clip_from_cache(source)  # another process may have made it meanwhile
            if found is None:
                self._miss()
                found = self._fetch_clip(uri, source)
        self._remember_clip(source, *found)
        return found

    def _fetch_clip(self, uri: S3Uri, source: str) -> tuple[str, Audio]:
        assert self.objects is not None
        try:
            data = self.objects.get_bytes(uri, self.limits.max_upload_bytes)
        except StorageError as exc:
            raise self._clip_error(uri, exc) from None
        digest = hashlib.sha256(data).hexdigest()
        samples = self._read_clip(digest)
        folder = self._clips_dir()
        if samples is None:
            wav = audio.encode(
                self.prepare(data, CLIP_PARAM, f"refAudio {uri}: "), SAMPLE_RATE, "wav"
            )
            if folder is not None:
                (folder / digest).mkdir(parents=True, exist_ok=True)
                write_atomic(folder / digest / "ref.wav", wav)
            # Every job reads the clip as the cache holds it (16-bit), whether or not there is one.
            samples = np.ascontiguousarray(sf.read(io.BytesIO(wav), dtype="float32")[0])
            log.info("reference clip %s prepared (%.2f s)", uri, len(samples) / SAMPLE_RATE)
        if folder is not None:
            (folder / "sources").mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "sources" / source, digest.encode())
        return digest, samples

    def _clip_transcript(self, digest: str, samples: Audio, transcribe: bool) -> str:
        folder = self._clips_dir()
        with self._lock:
            text = self._clip_texts.get(digest, "")
        if not text and folder is not None:
            with contextlib.suppress(OSError):
                text = (folder / digest / "asr.txt").read_text().strip()
        if text:
            return text
        if self.transcriber is None:
            raise BadRequest(
                "refText is required: no speech recognition model is in the cache to "
                "transcribe the reference clip (give the words spoken in it as refText)",
                "voice.refText",
            )
        if not transcribe:
            return ""
        text = self._transcribe(samples)
        with self._lock:
            self._clip_texts[digest] = text
        if folder is not None and (folder / digest).is_dir():
            with contextlib.suppress(OSError):
                write_atomic(folder / digest / "asr.txt", text.encode())
        return text

    # ------------------------------------------------------------------ writing

    def _check_size(self, data: bytes, param: str, subject: str = "the audio file") -> None:
        if not data:
            raise BadRequest(f"{subject} is empty (0 bytes)", param)
        if len(data) > self.limits.max_upload_bytes:
            raise BadRequest(
                f"{subject} is {len(data)} bytes; the limit is {self.limits.max_upload_bytes}",
                param,
                413,
            )

    def prepare(self, data: bytes, param: str, prefix: str = "") -> Audio:
        """Reference audio as every voice gets it: decoded, measured, converted to 24 kHz
        mono, clipped to about 12 s and trimmed (refaudio.prepare_reference); a 4xx
        (``prefix`` + what is wrong) for anything F5-TTS cannot use. Blocks (ffmpeg)."""
        limits = self.limits
        self._check_size(data, param, f"{prefix}the audio file" if prefix else "the audio file")
        try:
            probe = audio.decode(data, PROBE_RATE)
        except audio.AudioError as exc:
            raise BadRequest(
                f"{prefix}the file is not audio this server can read "
                f"(wav, flac, mp3, ogg/opus, m4a): {exc}",
                param,
            ) from None
        seconds = len(probe) / PROBE_RATE
        if seconds > limits.max_seconds:
            raise BadRequest(
                f"{prefix}the audio is too long: {seconds:.0f} s; the limit is "
                f"{limits.max_seconds:.0f} s (F5-TTS uses at most 12 s of it; use a short clip)",
                param,
            )
        samples = audio.decode(data, SAMPLE_RATE)
        reference = prepare_reference(samples, SAMPLE_RATE)
        if len(reference) == 0:
            raise BadRequest(f"{prefix}the audio is silent: nothing above -42 dBFS", param)
        speech = len(reference) / SAMPLE_RATE - 0.05
        if speech < limits.min_speech_seconds:
            raise BadRequest(
                f"{prefix}the audio has only {max(speech, 0):.2f} s of sound; "
                f"at least {limits.min_speech_seconds:.1f} s is needed",
                param,
            )
        return reference

    def create(self, name: str, data: bytes, text: str = "") -> dict[str, Any]:
        """Validate, convert, trim and persist a new voice; 4xx with a reason, nothing stored on error."""
        check_name(name)
        if name == DEFAULT:
            raise BadRequest("voice 'default' is built in; choose another name", "name", 409)
        if name in self.aliases:
            raise BadRequest(
                f"{name!r} is an alias of voice {self.aliases[name]!r}; choose another name, "
                f"or register the voice under another name and map {name!r} to it",
                "name",
                409,
            )
        if self.voices_dir is None:
            raise BadRequest(
                "this server stores no voices: start it with --cache-dir (and --voices-uri)",
                "name",
            )
        limits = self.limits
        self._check_size(data, "file")
        text = text.strip()
        if len(text) > limits.max_text_chars:
            raise BadRequest(
                f"text is {len(text)} characters; the limit is {limits.max_text_chars}", "text"
            )
        if self._exists(name):
            raise BadRequest(f"voice {name!r} already exists; delete it first", "name", 409)
        reference = self.prepare(data, "file")
        if not text:
            text = self._transcribe(reference)
        wav = audio.encode(reference, SAMPLE_RATE, "wav")
        digest = hashlib.sha256(wav).hexdigest()
        meta: dict[str, Any] = {
            "name": name,
            "text": text,
            "seconds": round(len(reference) / SAMPLE_RATE, 3),
            "sampleRate": SAMPLE_RATE,
            "sha256": digest,
            "audio": f"ref-{digest[:16]}.wav",
            "createdAt": _now_iso(),
        }
        with self._name_lock(name):
            if self._exists(name):
                raise BadRequest(f"voice {name!r} already exists; delete it first", "name", 409)
            if self.remote is not None:
                meta["etag"] = self._put_remote(name, wav, meta)
            self._write_local(name, wav, text, meta)
        entry = self._read_local(name)
        if entry is None:
            raise Unavailable(f"voice {name!r} could not be written to the cache")
        self._remember(name, entry)
        log.info("voice %r registered (%.2f s)", name, entry.info["seconds"])
        return dict(entry.info)

    def _transcribe(self, reference: Audio) -> str:
        if self.transcriber is None:
            raise BadRequest(
                "text is required: this server has no ASR model to transcribe the reference "
                "(give the words spoken in the clip as 'text')",
                "text",
            )
        try:
            text = self.transcriber(reference, SAMPLE_RATE).strip()
        except Exception as exc:
            log.exception("ASR failed")
            raise Unavailable(
                f"transcribing the reference failed: {type(exc).__name__}: {exc}"
            ) from None
        if not text:
            raise BadRequest("the ASR model heard no words in the clip; give the text", "text")
        return text

    def _put_remote(self, name: str, wav: bytes, meta: dict[str, Any]) -> str:
        remote, objects = self._bucket()
        audio_uri = remote.join(name, str(meta["audio"]))
        try:
            objects.put_bytes(audio_uri, wav, "audio/wav", what="voice")
            record = json.dumps({k: v for k, v in meta.items() if k != "etag"}, indent=1).encode()
            return objects.put_bytes(
                remote.join(name, META), record, "application/json", what="voice"
            )
        except StorageError as exc:
            try:
                objects.delete(audio_uri)
            except StorageError as cleanup:
                log.warning("could not remove the half-stored voice %s: %s", audio_uri, cleanup)
            raise Unavailable(f"could not store voice {name!r} in the bucket: {exc}") from None

    def delete(self, name: str) -> None:
        """Remove a voice from the bucket, the cache and memory; 409 while a job uses it."""
        check_name(name)
        if name == DEFAULT:
            raise BadRequest("voice 'default' is built in and cannot be deleted", "name")
        if name in self.aliases:
            raise BadRequest(
                f"{name!r} is an alias of voice {self.aliases[name]!r}, not a voice of its own; "
                "aliases are set by the server's configuration",
                "name",
            )
        with self._name_lock(name):
            with self._lock:
                users = self._holds[name]
            if users:
                raise BadRequest(
                    f"voice {name!r} is used by {users} queued or running job(s); "
                    "delete it when they finish",
                    "name",
                    409,
                )
            if not self._exists(name):
                raise self._unknown(name)
            if self.remote is not None and self.objects is not None:
                try:
                    # voice.json first: from that moment no replica finds the voice.
                    self.objects.delete(self.remote.join(name, META))
                    for key in self.objects.list_keys(self.remote.join(name)):
                        self.objects.delete(S3Uri(self.remote.bucket, key))
                except StorageError as exc:
                    raise Unavailable(
                        f"could not delete voice {name!r} from the bucket: {exc}"
                    ) from None
            if self.voices_dir is not None:
                self._remove_local(name)
            self._forget(name)
        log.info("voice %r deleted", name)

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        """Mark a voice in use (by a job) for the block: deleting it meanwhile is refused."""
        name = self.resolve(name)
        with self._lock:
            self._holds[name] += 1
        try:
            yield
        finally:
            with self._lock:
                self._holds[name] -= 1
                if self._holds[name] <= 0:
                    del self._holds[name]
