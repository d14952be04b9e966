#!/usr/bin/env bash
# The test suite: unit, integration, property, crash-recovery and tidy (fmt, clippy,
# layering) tests of the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace "$@"
