#!/usr/bin/env bash
# The GPU check (issue 18, item 3). Run it on a CUDA machine from the repository root, after
# `make setup` (or with VENV=path/to/venv, a virtualenv holding latentseg and a CUDA build of
# torch):
#
#     benchmarks/gpu_check.sh [OUTPUT_DIR]        # default: gpu-check-YYYYMMDD-HHMM
#
# 1. environment: the GPU (nvidia-smi), torch and CUDA; exits 2 if torch sees no CUDA device;
# 2. agreement: the CUDA cases of the agreement tests of the fast path against the reference
#    (outputs and gradients in float32 with TF32 off, to float32 rounding; bf16 logits within
#    5% of their range of float32's);
# 3. bench, bench-batch256: `latentseg bench --device cuda` on the tutorial's model, the fast
#    path (and the fast path with bf16 autocast) against the reference, at the bench's batch
#    of 32 and at 256, then what bf16 costs in accuracy; the JSON of each;
# 4. study, report: the demo study (studies/quick.yaml) with one worker per GPU into a
#    temporary tracking store, then `latentseg report` on it;
# 5. a one-screen summary (summary.txt).
#
# Everything lands in OUTPUT_DIR: each step's output (NAME.log), timings.tsv (step, seconds,
# exit status), bench.json, bench-batch256.json, agreement.xml, report/ and summary.txt. A step
# that fails or runs past its limit is recorded and the next one still runs; the script then
# exits 1. About 5-10 minutes on one H200.
set -euo pipefail

venv=${VENV:-.venv}
python=$venv/bin/python
latentseg=$venv/bin/latentseg
out=${1:-gpu-check-$(date +%Y%m%d-%H%M)}

# The selection of agreement tests: their CUDA cases (tests/models/conftest.py's `device`).
agreement_tests=(tests/models/test_fastpath.py tests/models/test_models.py -m "not slow" -k cuda)

fail() {
    echo "error: $*" >&2
    exit 2
}

[ -f pyproject.toml ] && [ -d latentseg ] || fail "run this from the repository root: benchmarks/gpu_check.sh [OUTPUT_DIR]"
[ -x "$latentseg" ] || fail "$latentseg not found: run make setup, or set VENV to a virtualenv with latentseg and a CUDA build of torch"
command -v nvidia-smi >/dev/null || fail "nvidia-smi not found: no NVIDIA driver on this machine"
command -v timeout >/dev/null || fail "timeout (GNU coreutils) not found: it bounds each step"
mkdir -p "$out"
printf 'step\tseconds\tstatus\n' >"$out/timings.tsv"
failed=0

step() { # step NAME LIMIT_S COMMAND...: run COMMAND (output to the screen and OUT/NAME.log), timed
    local name=$1 limit=$2 started status=0
    shift 2
    echo
    echo "== $name (limit ${limit}s): $(printf '%q ' "$@")"
    started=$(date +%s)
    # -k: a step that ignores the TERM (a study's workers finishing a trial) is killed 30 s later
    timeout -k 30 "$limit" "$@" 2>&1 | tee "$out/$name.log" || status=$?
    printf '%s\t%s\t%s\n' "$name" "$(($(date +%s) - started))" "$status" >>"$out/timings.tsv"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "== $name: ran past its ${limit}s limit"
    elif [ "$status" -ne 0 ]; then
        echo "== $name: exit status $status"
    fi
    [ "$status" -eq 0 ] || failed=1
}

# ------------------------------------------------------------------ 1. environment
started=$(date +%s)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit with uncommitted changes"
echo "commit $commit; $(uname -srm), $(getconf _NPROCESSORS_ONLN) cores" | tee "$out/environment.log"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.csv"
# One study worker per GPU: `nvidia-smi -L` lines that name a GPU (a MIG slice adds lines).
gpus=$(nvidia-smi -L | grep -c '^GPU ') || fail "nvidia-smi -L lists no GPU"
torch_status=0
"$python" -c '
import sys, torch
available = torch.cuda.is_available()
print(f"torch {torch.__version__}, built with CUDA {torch.version.cuda}, cuda available: {available}, "
      f"{torch.cuda.device_count() if available else 0} devices")
sys.exit(0 if available else 3)
' >>"$out/environment.log" 2>&1 || torch_status=$?
tail -n 1 "$out/environment.log"
case $torch_status in
    0) ;;
    3) fail "torch in $venv sees no CUDA device (line above): install a CUDA build of torch there (https://pytorch.org/get-started/locally/), or check the driver with nvidia-smi" ;;
    *) fail "$python could not run torch (see $out/environment.log)" ;;
esac
printf 'environment\t%s\t0\n' "$(($(date +%s) - started))" >>"$out/timings.tsv"

# ------------------------------------------------------------------ 2. agreement tests
step agreement 300 "$python" -m pytest "${agreement_tests[@]}" -q -p no:cacheprovider --junitxml="$out/agreement.xml"

# ------------------------------------------------------------------ 3. bench
# The bench's own settings (batch 32, 128x128) keep its figures comparable with the CPU's;
# at that size a GPU step is a few milliseconds, so windows of 20 steps. Batch 256 shows
# the GPU busy.
step bench 300 "$latentseg" bench --device cuda --only models,bf16 --variants tutorial --steps 20 --json "$out/bench.json"
step bench-batch256 300 "$latentseg" bench --device cuda --only models --variants tutorial --batch-size 256 --steps 20 --json "$out/bench-batch256.json"

# ------------------------------------------------------------------ 4. demo study and report
store=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-store.XXXXXX")
trap 'rm -rf "$store"' EXIT
step study 480 "$latentseg" study studies/quick.yaml --workers "$gpus" --tracking-uri "sqlite:///$store/mlflow.db" --no-progress
step report 120 "$latentseg" report --study quick --tracking-uri "sqlite:///$store/mlflow.db" --output "$out/report"

# ------------------------------------------------------------------ 5. summary
echo
"$python" - "$out" <<'EOF' | tee "$out/summary.txt"
import csv
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

out = Path(sys.argv[1])


def lines(name):
    path = out / name
    return path.read_text(errors="replace").splitlines() if path.exists() else []


print(f"GPU check: {out}")
print("  " + "; ".join(lines("environment.log")))
print("  GPU: " + "; ".join(lines("gpu.csv")[1:]))
steps = list(csv.DictReader((out / "timings.tsv").open(), delimiter="\t"))
print("  steps: " + ", ".join(
    f"{s['step']} {s['seconds']} s" + ("" if s["status"] == "0" else f" (FAILED, {s['status']})")
    for s in steps
))
print(f"  total {sum(int(s['seconds']) for s in steps)} s")

if (out / "agreement.xml").exists():
    suite = ElementTree.parse(out / "agreement.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    print(f"agreement, CUDA cases: {passed} passed, {counts['failures']} failed, "
          f"{counts['errors']} errors, {counts['skipped']} skipped (of {counts['tests']})")
else:
    print("agreement: no result (see agreement.log)")

for name in ("bench.json", "bench-batch256.json"):
    if not (out / name).exists():
        print(f"{name}: no result (see {name.removesuffix('.json')}.log)")
        continue
    result = json.loads((out / name).read_text())
    settings, machine = result["settings"], result["machine"]
    print(f"{name}: {machine.get('gpu', machine['device'])}, fp32 matmul "
          f"{machine['matmul_gflops']:.0f} GFLOP/s, batch {settings['batch_size']}, "
          f"{settings['image_size']}x{settings['image_size']}, bf16 {machine['bf16']}")
    for row in result.get("models", []):
        for mode in ("train", "infer"):
            figures = [f"reference {row[f'reference_{mode}_images_per_s']:.0f}",
                       f"fast {row[f'fast_{mode}_images_per_s']:.0f} ({row[f'fast_{mode}_ratio']:.2f}x)"]
            if f"fast_bf16_{mode}_images_per_s" in row:
                figures.append(f"fast+bf16 {row[f'fast_bf16_{mode}_images_per_s']:.0f} "
                               f"({row[f'fast_bf16_{mode}_ratio']:.2f}x)")
            print(f"  {row['variant']} {mode}, images/s: " + ", ".join(figures))
        memory = [f"{who} {row[f'{who}_activation_mb']:.0f}" for who in ("reference", "fast", "fast_bf16")
                  if f"{who}_activation_mb" in row]
        print(f"  held for backward, MB: {', '.join(memory)}; fast path at "
              f"{100 * (row['fast_matmul_share'] or 0):.0f}% of fp32 matmul")
    if "bf16_accuracy" in result:
        acc = result["bf16_accuracy"]
        print(f"  bf16 accuracy: val mIoU {acc['bf16_val_miou']:.4f} vs float32 "
              f"{acc['float32_val_miou']:.4f} ({acc['miou_difference']:+.4f}), "
              f"{acc['bf16_s']:.0f} s vs {acc['float32_s']:.0f} s")

study = [line for line in lines("study.log") if line.startswith("study '")]
print(study[-1] if study else "study: no summary line (see study.log)")
report = lines("report.log")
verdicts = next((report[i : i + 7] for i, line in enumerate(report) if line.startswith("baseline:")), [])
print("report: " + ("\n  ".join(verdicts) if verdicts else "no verdicts (see report.log)"))
print(f"all outputs: {out}/ (NAME.log per step, timings.tsv, *.json, agreement.xml, report/)")
EOF

exit "$failed"
