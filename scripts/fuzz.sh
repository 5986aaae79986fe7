#!/usr/bin/env bash
# Fuzzes the CSV parser/validator, the image format sniffer and the
# compression engine with cargo fuzz (libFuzzer), SECONDS_PER_TARGET each
# (default 60), starting from the seed corpus in fuzz/seeds/ (and, for the
# engine, the example photographs under 64 KiB). A crash or a broken
# invariant stops the run and leaves the input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh          # 60 s per target
#   scripts/fuzz.sh 600      # longer
#
# cargo fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them. Installs cargo-fuzz (crates.io) if missing.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/imgproc-fuzz-target}"
cd "$repo/fuzz"
for target in csv_input sniff compress; do
  corpus="$(mktemp -d)"
  cp "seeds/$target"/* "$corpus/"
  if [ "$target" = compress ]; then
    find ../examples/photos -type f -size -64k ! -name '*.md' -exec cp {} "$corpus/" \;
  fi
  echo "== cargo fuzz run $target for ${seconds} s"
  # -s none for the parsers (safe Rust); AddressSanitizer for the engine,
  # whose unsafe code reads libjpeg's memory. -rss_limit_mb: an input that
  # makes the target allocate without bound fails the run; -max_len: 64 KiB.
  sanitizer=none
  [ "$target" = compress ] && sanitizer=address
  log="$corpus.log"
  if ! cargo fuzz run -s "$sanitizer" -O "$target" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzzing $target failed: the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -E "^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$log"
  rm -f "$log"
  rm -rf "$corpus"
done
