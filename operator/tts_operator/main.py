"""Entry point of the `tts-operator` console script: settings, then Kopf's runtime."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import kopf

from tts_operator import config, constants

log = logging.getLogger("tts_operator")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Name Kopf's finalizer and progress records under the project's group."""
    settings.persistence.finalizer = constants.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=constants.ANNOTATIONS_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=constants.ANNOTATIONS_PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300


def main(argv: Sequence[str] | None = None) -> int:
    settings = config.parse(argv, os.environ)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.info(
        "watching %s",
        "all namespaces" if settings.all_namespaces else ", ".join(settings.namespaces),
    )
    kopf.run(
        clusterwide=settings.all_namespaces,
        namespaces=list(settings.namespaces),
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        peering_name=settings.peering,
        standalone=settings.peering is None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
