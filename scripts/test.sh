#!/usr/bin/env bash
# Every test, as CI runs them: the whole suite on vLLM 0.32 (transformers 5), then every test that starts
# vLLM or touches its or transformers' API (`-m vllm`) on the older vLLMs users run: 0.18 with transformers
# 4.57 (the reference deployment's stack) and 0.23 with transformers 5.5.4 (the newest vllm-ascend's; without
# the `reference_vllm_only` engine runs).
# Sets up every venv first (each older one downloads ~4 GB the first time). Extra arguments go to every
# pytest run.
set -uo pipefail
cd "$(dirname "$0")/.."
# vLLM version, the torch it was built against, the transformers to hold (empty: what pip picks)
OLDER=("0.18.0 2.10.0" "0.23.0 2.11.0 5.5.4")
# which of the tests marked vllm each runs: 0.23 leaves out the engine runs that repeat another's API path
declare -A SELECT=(["0.18.0"]="vllm" ["0.23.0"]="vllm and not reference_vllm_only")
# Disk first: a cold set-up takes ~18 GiB (each older vLLM brings a CUDA torch with its nvidia-* wheels), and a
# full disk shows up only as pip's "No space left on device" half-way through. GiB per venv as measured on x86_64,
# plus room for the wheels pip holds while it installs one venv.
declare -A VENV_GIB=([".venv"]=4 [".venv-vllm-0.18.0"]=9 [".venv-vllm-0.23.0"]=7)
need=0
for venv in "${!VENV_GIB[@]}"; do [ -x "$venv/bin/python" ] || need=$((need + VENV_GIB[$venv])); done
free=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
if [ "$need" -gt 0 ] && [ "$free" -lt $((need + 3)) ]; then
    echo "setting up the venvs needs about $((need + 3)) GiB free on $(df -P . | awk 'NR == 2 {print $6}'), and" \
        "$free GiB are: free some space, then run again" >&2
    exit 1
fi
export PIP_NO_CACHE_DIR=1  # pip's wheel cache would hold a second copy of every CUDA wheel
say() { echo "[$(date +%T)] $*"; }  # phase lines carry the time, so a CI log shows where a cold run spends it
say "setting up .venv (vLLM 0.32)"
bash scripts/setup.sh || { echo "setting up .venv failed" >&2; exit 1; }
# stop a background job and every process it started (its commands are children of its subshell, and would go on
# writing into a checkout that may be gone)
kill_tree() { local kids; kids=$(pgrep -P "$1"); kill "$1" 2>/dev/null; for kid in $kids; do kill_tree "$kid"; done; }
stop() { kill_tree "$1"; wait "$1" 2>/dev/null; }
# Fixtures once, by the real mlx_lm.convert in the 0.32 venv (the other runs read the same files), built while
# the older venvs are set up: training keeps the cores busy, the set-ups mostly download and unpack. Then the
# families: trained ones for the engine, random ones for the weight checks.
((.venv/bin/python examples/tiny_qwen3.py .cache/fixtures --variants all &&
    .venv/bin/python examples/tiny_families.py .cache/families --trained &&
    .venv/bin/python examples/tiny_families.py .cache/families) >/dev/null && say "fixtures built") &
fixtures=$!
for spec in "${OLDER[@]}"; do
    say "setting up vLLM ${spec%% *}"
    # shellcheck disable=SC2086
    bash scripts/setup_vllm_cpu.sh $spec || { echo "setting up vLLM ${spec%% *} failed" >&2; stop "$fixtures"; exit 1; }
done
wait "$fixtures" || { echo "building the fixtures failed" >&2; exit 1; }
say "== vLLM 0.32 (vllm-cpu), transformers 5: the whole suite"
.venv/bin/python -m pytest tests --durations=25 "$@"
failed=$?
summary="vLLM 0.32: exit $failed"
for spec in "${OLDER[@]}"; do
    read -r version _ <<< "$spec"
    say "== vLLM $version (vllm-cpu): the tests marked ${SELECT[$version]}"
    # shellcheck source=scripts/vllm-cpu-env.sh
    (VENV=.venv-vllm-$version && source scripts/vllm-cpu-env.sh &&
        "$VENV/bin/python" -m pytest tests -m "${SELECT[$version]}" --durations=15 "$@")
    status=$?
    summary="$summary; vLLM $version: exit $status"
    [ "$status" = 0 ] || failed=1
done
say "$summary"
exit "$failed"
