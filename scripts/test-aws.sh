#!/usr/bin/env bash
# The AWS path's tests only: lints template.yaml, starts a moto server on
# 127.0.0.1 with the table, queues and bucket of infra/resources.json, runs
# the port conformance suite against the AWS adapters and the end-to-end
# tests on it, then stops the server it started.
#
#   scripts/test-aws.sh            # everything
#   MOTO_PORT=5055 scripts/test-aws.sh
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
# shellcheck source=scripts/dev-tools.sh
source scripts/dev-tools.sh

echo "== cfn-lint template.yaml"
cfn-lint template.yaml
start_moto
echo "== cargo test (AWS adapters and handlers on moto)"
cargo test -p imgproc-shared --features stream-poller --lib --test ports_conformance --test aws_end_to_end --test aws_secrets
