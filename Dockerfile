# syntax=docker/dockerfile:1
# seli in a container: the `seli` binary on a slim Debian base, run as a non-root user.
#
#   docker build -t seli .                              the image; its entrypoint is seli
#   docker run --rm -v "$PWD/runs:/work/runs" seli reproduce
#   docker build --target wheel --output dist .          the Python wheel (abi3) into dist/
#
# Stages: `build` compiles with the Rust image, `wheel` holds only the Python wheel, and the
# last stage (the default target) is the runtime image.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
COPY . .
# The release build the README documents, installed under /opt/seli.
RUN cargo install --path crates/seli-cli --locked --root /opt/seli

FROM build AS wheel-build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "maturin==1.16.0" \
    && /opt/venv/bin/maturin build --release -m crates/seli-py/Cargo.toml -o /wheels

FROM scratch AS wheel
COPY --from=wheel-build /wheels/ /

FROM debian:${DEBIAN}-slim AS runtime
# The binary needs only glibc and libgcc; fonts give the PNG copies of the figures their text.
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/seli seli \
    && mkdir /work && chown seli:seli /work
COPY --from=build /opt/seli/bin/seli /usr/local/bin/seli
USER seli
WORKDIR /work
ENTRYPOINT ["seli"]
CMD ["--help"]
