#!/usr/bin/env bash
# The checks that need a GPU, prepared so that one call of the device tool runs them all (README,
# "Checks on a GPU"). The GPU machine's image holds CUDA torch but can fetch nothing, and a
# lease is short, so the wheels it lacks, the real agent trace and the trained BPE tokenizer are
# readied here first and travel in `.gpu/` (ignored by git, named in `carry`).
#
#   scripts/gpu_check.sh prepare   # here: fill .gpu/ (needs the package registry and ../shared)
#   scripts/gpu_check.sh run       # there: each check under its own time limit, results in $OUT
#                                  # (the limits add up to 8 minutes: one device call of 600 s)
#
# `run` goes on past a failed check (a traceback on CUDA is itself the result) and ends with a
# summary line per check. PYTHON, DEVICE and SKIP_WHEELS let it be tried on a CPU machine:
#   PYTHON=.venv/bin/python DEVICE=cpu SKIP_WHEELS=1 OUT=/tmp/gpu scripts/gpu_check.sh run
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
    set -e
    grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    mkdir -p .gpu/whl
    .venv/bin/python scripts/gpu_wheels.py > .gpu/requirements.txt
    # CPython 3.12 on x86-64 Linux with glibc 2.39 (the GPU image's python3, Ubuntu 24.04): pip
    # matches each manylinux tag exactly, so name them all (no-deps: the list is the closure)
    local tags=(--platform manylinux2014_x86_64)
    for n in $(seq 17 39); do tags+=(--platform "manylinux_2_${n}_x86_64"); done
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${tags[@]}" -d .gpu/whl -r .gpu/requirements.txt
    cp ../shared/traces/miniswe_deepseek.jsonl.gz .gpu/
    # Train (or reuse) the BPE tokenizer `bench spec` counts in, so the lease does not pay for it.
    .venv/bin/legato bench spec --trace .gpu/miniswe_deepseek.jsonl.gz --cache-dir .gpu/spec \
        --sessions 1 --drafters suffix --ablations '' --draft-lens 1 --no-adaptive \
        --decode-batches '' > /dev/null
    du -sh .gpu
}

# check NAME SECONDS COMMAND...: run one check under a time limit, its output in $OUT/NAME.log
check() {
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$OUT/$name.log"
    RESULTS+=("$name: rc=$rc in $((SECONDS - started)) s")
}

run() {
    OUT=${OUT:-/tmp/gpu_check}
    DEVICE=${DEVICE:-cuda}
    PY=${PYTHON:-python3}
    mkdir -p "$OUT"
    if [ ! -f .gpu/miniswe_deepseek.jsonl.gz ] || [ ! -d .gpu/whl ]; then
        echo "no .gpu/ here: run 'scripts/gpu_check.sh prepare' first and carry .gpu" | tee "$OUT/summary.txt" >&2
        exit 1
    fi
    if [ -z "${SKIP_WHEELS:-}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .gpu/whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site:$PWD
    else
        export PYTHONPATH=$PWD
    fi
    export PYTHONUNBUFFERED=1 LEGATO_TEST_DEVICE=$DEVICE
    # What comes back from the device tool is at most 8 files: summary.txt, 4 logs, 3 JSON.
    RESULTS=("$(nvidia-smi -L 2>&1 | head -n 1)" "$("$PY" -c 'import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")' 2>&1)")
    printf '%s\n' "${RESULTS[@]}"
    # The engine's own tests on the device (those that build their core through `make_core`;
    # the tier tests need a redis-server binary and stay on CI). The image's own pytest plugins
    # (coverage, benchmark, xdist, ...) are kept out: the tests need none of them.
    check engine_tests 90 "$PY" -m pytest -q -p no:cacheprovider -p no:cov -p no:benchmark \
        -p no:xdist -p no:timeout -p no:mock -p no:randomly tests/engine \
        --ignore=tests/engine/test_tier_engine.py --ignore=tests/engine/test_tier_prefetch.py
    # Greedy tokens against Hugging Face transformers on the same weights, and tokens/s.
    check engine_bench 60 "$PY" -m legato.cli bench engine --device "$DEVICE" --quick \
        --json "$OUT/engine_bench.json"
    # Issue 14: decode tok/s with and without speculation at batch 1, 8, 32 (oracle target).
    # (The README's command: the acceptance part runs on the CPU either way.)
    check spec_bench 120 "$PY" -m legato.cli bench spec --device "$DEVICE" --sessions 4 \
        --ablations '' --decode-repeats 3 --trace .gpu/miniswe_deepseek.jsonl.gz \
        --cache-dir .gpu/spec --json "$OUT/spec_bench.json"
    # Issue 15: multi-turn GRPO rollouts through `legato serve`, Legato vs passthrough.
    check rl_bench 210 "$PY" -m legato.cli bench rl --device "$DEVICE" --json "$OUT/rl_bench.json"
    printf '%s\n' "${RESULTS[@]}" | tee "$OUT/summary.txt"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: scripts/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
