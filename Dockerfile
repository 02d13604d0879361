# syntax=docker/dockerfile:1
#
# Lip-sync service image: OpenVINO on CPU, no torch at run time. Needs BuildKit, the default
# builder since Docker 23 (`docker buildx build` always uses it): the legacy builder has no
# RUN heredocs and fails on a COPY wildcard that matches nothing.
#
#   docker build -t lipsync .                                # the authors' published weights
#   docker build -t lipsync --build-arg UNTRAINED=1 .        # random weights: try the API only
#   docker run --rm -p 5001:5001 lipsync
#
# Stage "convert" (torch) turns the checkpoints into OpenVINO IR; stage "runtime" gets only the
# IR files and the serving code, installed as the `lipsync` package without extras. The checkpoints are picked in this order:
#   1. UNTRAINED=1: seeded random-init weights. The API works end to end but the mouths are
#      meaningless; for trying the service and its clients, never for real use.
#   2. checkpoints/wav2lip.pth (+ optional wav2lip_gan.pth) and checkpoints/s3fd.pth in the build
#      context. `checkpoint[s]` below is a wildcard so that a context without that directory
#      still builds: BuildKit copies nothing for a wildcard that matches nothing.
#   3. download: checkpoints missing from checkpoints/ are fetched, by default from the authors'
#      links (the Wav2Lip README's Google Drive folder and file, the S3FD file of the
#      face-alignment project); WAV2LIP_URL, WAV2LIP_GAN_URL and S3FD_URL replace them, each
#      checked against *_SHA256 when given. The Wav2Lip weights are for non-commercial
#      research and personal use only (their README's terms, printed by the converter). Build
#      args stay in the convert stage's history only, not in the final image.
# When Google Drive refuses (its quota, "too many users"), the build stops with the manual
# steps: download the files by hand into checkpoints/ and build again.

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS convert

# requirements-conversion.txt pins torch==2.13.0. From PyPI alone that is the CUDA build (several GB
# of nvidia wheels); on a normal machine `pip install torch==2.13.0 --index-url
# https://download.pytorch.org/whl/cpu` gives the CPU build. As an extra index, pip prefers
# its 2.13.0+cpu (a local version sorts above 2.13.0); set TORCH_INDEX_URL to a mirror if
# needed.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /build
COPY requirements.txt requirements-conversion.txt ./
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" \
        -r requirements.txt -r requirements-conversion.txt

# The converter's entry point and the package it runs from: lipsync/conversion/ (checkpoints,
# downloads, random init, IR export), lipsync/networks/ (the torch definitions) and the
# package's small helpers.
COPY convert_to_openvino.py ./
COPY lipsync/ ./lipsync/
COPY checkpoint[s] ./checkpoints/

ARG UNTRAINED=0
ARG UNTRAINED_SEED=0
ARG WAV2LIP_URL=
ARG WAV2LIP_GAN_URL=
ARG S3FD_URL=
ARG WAV2LIP_SHA256=
ARG WAV2LIP_GAN_SHA256=
ARG S3FD_SHA256=
RUN <<'EOF'
set -eu
set --  # the converter's arguments, collected below
case "$UNTRAINED" in 1|true|yes)
    echo "WARNING: UNTRAINED=$UNTRAINED: converting random weights (seed $UNTRAINED_SEED);" \
         "the videos will show meaningless mouths. For trying the API only." >&2
    set -- --random-init "$UNTRAINED_SEED" --checkpoint-dir /tmp/untrained-checkpoints
    ;;
*)
    for name in wav2lip wav2lip_gan s3fd; do
        if [ -f "checkpoints/$name.pth" ]; then
            set -- "$@" "--$(echo "$name" | tr _ -)" "checkpoints/$name.pth"
        fi
    done
    # The converter downloads only what is not given as a local file.
    # Without a local wav2lip.pth the authors' files are fetched (the converter's default).
    if [ ! -f checkpoints/wav2lip.pth ] || [ ! -f checkpoints/s3fd.pth ] \
            || { [ ! -f checkpoints/wav2lip_gan.pth ] && [ -n "$WAV2LIP_GAN_URL" ]; }; then
        set -- "$@" --download --checkpoint-dir /tmp/downloaded-checkpoints
        if [ -n "$WAV2LIP_SHA256" ]; then set -- "$@" --wav2lip-sha256 "$WAV2LIP_SHA256"; fi
        if [ -n "$WAV2LIP_GAN_SHA256" ]; then
            set -- "$@" --wav2lip-gan-sha256 "$WAV2LIP_GAN_SHA256"
        fi
        if [ -n "$S3FD_SHA256" ]; then set -- "$@" --s3fd-sha256 "$S3FD_SHA256"; fi
    fi
    ;;
esac
echo "python convert_to_openvino.py $* --output-dir /build/models"
python convert_to_openvino.py "$@" --output-dir /build/models
rm -rf /tmp/untrained-checkpoints /tmp/downloaded-checkpoints
EOF

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

# No apt packages: the wheels in requirements.txt bundle their native libraries (OpenVINO with
# TBB, FFmpeg in av, libsndfile in soundfile, OpenCV headless) and need only libc6, libgcc-s1,
# libstdc++6 and zlib1g from the system, which the slim image has (no libgomp1, no libGL).
# Only OpenVINO's GPU plugin wants libOpenCL.so.1, and this image runs on the CPU.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# A fixed, non-root uid (for volume permissions and runAsNonRoot). The code and models stay
# root-owned and read-only; only the cache directories and the home directory are writable
# (gunicorn puts its control socket in ~/.gunicorn/).
RUN useradd --uid 10001 --user-group --no-log-init --create-home \
        --shell /usr/sbin/nologin lipsync \
    && mkdir -p /var/cache/lipsync/openvino /var/cache/lipsync/avatars \
        /var/cache/lipsync/metrics \
    && chown -R lipsync:lipsync /var/cache/lipsync

COPY --from=convert /build/models/ ./models/
# The serving code only, installed as the `lipsync` package (no extras; its dependencies are
# requirements.txt, installed above, so pip adds nothing), without its torch-only subpackages
# (lipsync/conversion/, lipsync/networks/: converting happens in the convert stage). Not the
# source tree's entry points, tools/, bench/ or tests/.
COPY pyproject.toml requirements.txt /tmp/src/
COPY lipsync/ /tmp/src/lipsync/
RUN rm -rf /tmp/src/lipsync/conversion /tmp/src/lipsync/networks \
    && pip install --no-cache-dir /tmp/src && rm -rf /tmp/src

# Everything the service writes goes under /var/cache/lipsync (mount a volume there to keep the
# compiled-model cache and the registered avatars across container restarts).
ENV PORT=5001 \
    LIPSYNC_MODELS_DIR=/app/models \
    LIPSYNC_CACHE_DIR=/var/cache/lipsync/openvino \
    LIPSYNC_AVATAR_DIR=/var/cache/lipsync/avatars \
    LIPSYNC_METRICS_DIR=/var/cache/lipsync/metrics

USER 10001:10001
EXPOSE 5001
# No curl in slim images: Python's urllib. A 503 (models missing) raises, so it exits 1 too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request as u; k = os.environ.get('LIPSYNC_API_KEY'); r = u.urlopen(u.Request('http://127.0.0.1:' + os.environ.get('PORT', '5001') + '/health', headers={'Authorization': 'Bearer ' + k} if k else {}), timeout=4); raise SystemExit(0 if r.status == 200 else 1)"
# gunicorn stops gracefully on SIGTERM (LIPSYNC_GRACEFUL_TIMEOUT, default 60 s): give
# `docker stop` at least that long, e.g. `docker stop -t 70`.
STOPSIGNAL SIGTERM
CMD ["gunicorn", "-c", "python:lipsync.server.gunicorn_conf", "lipsync.server.wsgi:app"]
