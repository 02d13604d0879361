#!/usr/bin/env bash
# One command: install the service, provide the models, run gunicorn on $PORT (default 5001).
#
# Models: converted from checkpoints/{wav2lip,wav2lip_gan,s3fd}.pth when present, else the
# authors' published checkpoints are downloaded into checkpoints/ (the Wav2Lip README's Google
# Drive links; WAV2LIP_URL, WAV2LIP_GAN_URL, S3FD_URL replace them). The Wav2Lip weights are
# for non-commercial research and personal use only (the converter prints the terms). When
# Drive refuses (quota), the converter prints the manual steps and the server starts degraded.
# `--untrained` converts seeded random weights instead: the API works end to end but mouths
# are meaningless (for trying the service).
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS_DIR=${LIPSYNC_MODELS_DIR:-models}
export LIPSYNC_MODELS_DIR=$MODELS_DIR

if [ ! -f "$MODELS_DIR/wav2lip.xml" ] || [ ! -f "$MODELS_DIR/face_detection.xml" ]; then
    ./scripts/setup.sh dev   # the converter needs torch; the server does not
    if [ "${1:-}" = "--untrained" ]; then
        args=(--random-init 0)
    elif [ -f checkpoints/wav2lip.pth ] && [ -f checkpoints/s3fd.pth ]; then
        args=(--wav2lip checkpoints/wav2lip.pth --s3fd checkpoints/s3fd.pth)
        [ -f checkpoints/wav2lip_gan.pth ] && args+=(--wav2lip-gan checkpoints/wav2lip_gan.pth)
    else
        args=(--download --checkpoint-dir checkpoints)
    fi
    .venv/bin/lipsync convert "${args[@]}" --output-dir "$MODELS_DIR" ||
        echo "WARNING: no models converted; the server starts degraded (see GET /health)." >&2
fi
./scripts/setup.sh
exec .venv/bin/lipsync serve   # gunicorn -c python:lipsync.server.gunicorn_conf lipsync.server.wsgi:app
