"""`make image` builds the operator image with buildah (no Docker engine), on the local Debian/python3 base."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILDAH = ["buildah", "--storage-driver", "vfs"]


def test_make_image_builds_a_runnable_non_root_operator_image(base_image):
    result = subprocess.run(["make", "-C", str(ROOT), "image", f"BASE_IMAGE={base_image}", "INSECURE=1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = json.loads(subprocess.run([*BUILDAH, "inspect", "--type", "image", "kenv-operator:dev"],
                                       check=True, capture_output=True, text=True).stdout)["OCIv1"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["kenv"] and config["Cmd"] == ["operator"]
    container = subprocess.run([*BUILDAH, "from", "kenv-operator:dev"], check=True, capture_output=True,
                               text=True).stdout.strip().splitlines()[-1]
    try:
        crd = subprocess.run([*BUILDAH, "run", "--isolation", "chroot", container, "--", "kenv", "crd"],
                             check=True, capture_output=True, text=True).stdout
    finally:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True)
    assert crd.count("kind: CustomResourceDefinition") == 2  # the installed package runs inside the image
