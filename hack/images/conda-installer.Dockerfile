# kenv's conda installer image: python with py-rattler and PyYAML, the stage every conda build solves in
# (KENV_CONDA_INSTALLER_IMAGE; hack/images.py builds it on the local Debian base). With it, conda builds need
# no PyPI: clusters without internet mirror this image. The pins are render.INSTALLER_REQUIREMENTS's
# (tests/unit/test_conda_installer.py keeps them equal).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# PIP_CERT: a CA bundle for a TLS-intercepting proxy, mounted by hack/images.py for the build only.
ARG PIP_CERT
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --disable-pip-version-check \
      py-rattler==0.28.0 PyYAML==6.0.3 \
 && python3 -c "import rattler, yaml"
