# The lap harness image (harness_id "lap") without ko, for registries and
# pipelines that build with Docker. ko (config/deploy/ko/.ko.yaml) builds
# the same binary on a git base; either image works as HARNESS_IMAGE_LAP.
# Build context: the repository root.
#   docker build -f config/deploy/images/lap-harness.Dockerfile -t lap.dev/harness-lap:latest .

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/lap-harness ./cmd/lap-harness

FROM debian:bookworm-slim
# git clones the agent's repository; the agent's tools expect the usual
# command-line tools next to it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates openssh-client ripgrep procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/lap-harness /usr/local/bin/lap-harness
# Knative sets PORT; lap sets WORKSPACE (an emptyDir) and HOME (/tmp) and
# runs the pod as uid 65532 on a read-only root filesystem.
USER 65532:65532
ENV WORKSPACE=/workspace HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/lap-harness"]
