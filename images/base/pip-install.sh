#!/bin/sh
# pip install into the image's venv, using the optional build extras mounted at /tmp/build-extras
# (RUN --mount, so nothing of them stays in a layer): ca.crt, the CA bundle of a build host
# behind a TLS-inspecting proxy (PIP_CERT), and wheelhouse/, local wheels such as the host's
# torch CPU wheel (PIP_FIND_LINKS). Without them this is a plain `pip install`.
set -eu
extras=/tmp/build-extras
if [ -f "$extras/ca.crt" ]; then export PIP_CERT="$extras/ca.crt"; fi
if [ -d "$extras/wheelhouse" ]; then export PIP_FIND_LINKS="$extras/wheelhouse"; fi
exec "${PIP:-pip}" install --no-cache-dir "$@"
