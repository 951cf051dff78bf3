#!/usr/bin/env bash
# fuzz/smoke.sh - build every fuzz target and run each for a short while (CI).
#
# Runs on stable Rust: libFuzzer without a sanitizer (`cargo fuzz run -s none`); debug
# assertions and overflow checks stay on (cargo-fuzz's default). Each target starts from a
# temporary copy of its checked-in seeds (fuzz/corpus/<target>/), so the seeds are never
# modified, and first replays fuzz/regressions/<target>/ (inputs that once crashed).
# Exits non-zero on any crash, leak, timeout or build failure; the crashing input is left
# in fuzz/artifacts/<target>/.
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 15)
#   FUZZ_TARGETS   space-separated targets (default: all, from `cargo fuzz list`)
#   FUZZ_TOOLCHAIN e.g. "+nightly" to run with AddressSanitizer instead (default: stable, -s none)
#   FUZZ_EXTRA_ARGS more libFuzzer flags, e.g. "-rss_limit_mb=512"
#   FUZZ_JOBS      targets run at the same time (default 1); long runs on demand, e.g.
#                  FUZZ_SECONDS=3600 FUZZ_JOBS=6 FUZZ_TOOLCHAIN=+nightly nice fuzz/smoke.sh
#   FUZZ_KEEP      a directory to keep each target's log and grown corpus in (default: removed)
set -euo pipefail

cd "$(dirname "$0")/.."   # the repository root: cargo fuzz finds ./fuzz
seconds="${FUZZ_SECONDS:-15}"
toolchain="${FUZZ_TOOLCHAIN:-}"
if [[ -n "$toolchain" ]]; then
    sanitizer=()
else
    sanitizer=(-s none)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "smoke.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# shellcheck disable=SC2086  # $toolchain is empty or one word
read -r -a targets <<<"${FUZZ_TARGETS:-$(cargo $toolchain fuzz list | tr '\n' ' ')}"
echo "smoke.sh: targets: ${targets[*]}; ${seconds}s each; toolchain ${toolchain:-default} ${sanitizer[*]:-(address sanitizer)}"

# shellcheck disable=SC2086
cargo $toolchain fuzz build "${sanitizer[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
keep="${FUZZ_KEEP:-}"
jobs="${FUZZ_JOBS:-1}"

# Runs one target; its exit status says whether it crashed. Output goes to "$work/$1.log".
run_one() {
    local t="$1" corpus="$work/corpus/$1" log="$work/$1.log"
    mkdir -p "$corpus"
    if [[ -d "fuzz/corpus/$t" ]]; then
        cp -R "fuzz/corpus/$t/." "$corpus/"
    fi
    local inputs=("$corpus")
    if [[ -d "fuzz/regressions/$t" ]] && compgen -G "fuzz/regressions/$t/*" >/dev/null; then
        # Replayed as part of the initial corpus: libFuzzer runs every file once before fuzzing.
        inputs+=("fuzz/regressions/$t")
    fi
    # shellcheck disable=SC2086
    cargo $toolchain fuzz run "${sanitizer[@]}" "$t" "${inputs[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_EXTRA_ARGS:-} >"$log" 2>&1
}

failed=()
declare -A pids=()
report() {   # $1 target, $2 exit status
    echo "== $1"
    if [[ "$2" == 0 ]]; then
        grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units|^stat::average_exec_per_sec' \
            "$work/$1.log" || true
    else
        failed+=("$1")
        echo "smoke.sh: $1 FAILED; last lines of its log:" >&2
        tail -n 60 "$work/$1.log" >&2
    fi
    if [[ -n "$keep" ]]; then
        mkdir -p "$keep/corpus"
        cp "$work/$1.log" "$keep/"
        rm -rf "${keep:?}/corpus/$1"
        cp -R "$work/corpus/$1" "$keep/corpus/"
    fi
}
wait_one() {   # waits for one running target to end and reports it
    local done_pid status=0 t
    wait -n -p done_pid "${!pids[@]}" || status=$?
    t="${pids[$done_pid]}"
    unset "pids[$done_pid]"
    report "$t" "$status"
}
for t in "${targets[@]}"; do
    while ((${#pids[@]} >= jobs)); do wait_one; done
    run_one "$t" &
    pids[$!]="$t"
done
while ((${#pids[@]})); do wait_one; done

if ((${#failed[@]})); then
    echo "smoke.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "smoke.sh: all ${#targets[@]} targets ran ${seconds}s without a crash"
