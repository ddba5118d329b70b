#!/usr/bin/env bash
# The install the way a user does it, from scratch, with nothing set:
#   1. a fresh venv, `pip install torch==2.14.1 numpy`, then a plain
#      `pip install -e .` (build isolation on, as pip does by default; no
#      CUDA_HOME/CUDA_PATH: the probe in minitorch_ext/_toolkit.py finds the
#      toolkit), and the smoke test (import, one op against torch, `info`);
#   2. (unless INSTALL_CHECK_WHEEL=0) `pip wheel --no-build-isolation --no-deps .`
#      installed in place of the editable install and smoke-tested from outside
#      the source tree, and `python -m build --sdist` checked for every source
#      file the build needs. The wheel is built CPU-only (MINITORCH_EXT_NO_CUDA=1;
#      INSTALL_CHECK_WHEEL_CUDA=1 builds it with CUDA): step 1 has already compiled
#      every .cu with a plain pip, and `make test` before it too, so a third CUDA
#      build (~15 min on 2 cores) would test the packaging of nothing new.
# Prints the wall time and the line count of each build's output. Exit 1 on any failure.
# Usage: bash scripts/install_check.sh [WORKDIR]   (default: a new temp folder)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
WORK=${1:-$(mktemp -d /tmp/mte_install_check.XXXXXX)}
PY=${PYTHON_BASE:-python3}
export MAX_JOBS=${MAX_JOBS:-2}
unset CUDA_HOME CUDA_PATH TORCH_CUDA_ARCH_LIST MINITORCH_EXT_NO_CUDA MINITORCH_EXT_CPU_ISA || true
say() { echo "[install_check] $*"; }

smoke() {  # $1: python; run from outside the source tree
  (cd "$WORK" && "$1" - <<'PY'
import torch, minitorch_ext as mte
x = torch.randn(8, 64); w = torch.randn(64); b = torch.randn(64)
ours = mte.nn.functional.layer_norm(x, (64,), w, b)
ref = torch.nn.functional.layer_norm(x, (64,), w, b)
torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
print("smoke ok:", mte.__file__, mte.build_info())
PY
  ) && (cd "$WORK" && "$1" -m minitorch_ext info > "$WORK/info.txt") && head -5 "$WORK/info.txt"
}

# the clone: only what git tracks (a user's fresh clone), no build products
rm -rf "$WORK/src"; git -C "$SRC" worktree prune
git clone -q --no-hardlinks "$SRC" "$WORK/src"
if [ -n "$(git -C "$SRC" status --porcelain --untracked-files=no)" ]; then
  say "note: testing the committed tree ($(git -C "$SRC" rev-parse --short HEAD)); uncommitted changes are not in it"
fi

say "fresh venv in $WORK/venv"
$PY -m venv "$WORK/venv"
V="$WORK/venv/bin/python"
t0=$(date +%s)
"$V" -m pip install -q torch==2.14.1 numpy
say "torch into the venv: $(( $(date +%s) - t0 )) s"

say "plain 'pip install -e .' (build isolation on, nothing set)"
t0=$(date +%s)
if ! (cd "$WORK/src" && "$V" -m pip install -v -e .) > "$WORK/build_editable.log" 2>&1; then
  tail -30 "$WORK/build_editable.log"; say "FAILED: pip install -e ."; exit 1
fi
say "pip install -e .: $(( $(date +%s) - t0 )) s, $(wc -l < "$WORK/build_editable.log") lines of output (-v)"
grep "\[minitorch_ext\]" "$WORK/build_editable.log" | sort -u | sed 's/^ */  /'
smoke "$V"
"$V" -c "import minitorch_ext as m, sys; sys.exit(0 if m.build_info()['cuda'] or not __import__('os').path.exists('/usr/local/cuda/bin/nvcc') else 'a complete toolkit is installed but the CUDA kernels were not built')"

if [ "${INSTALL_CHECK_WHEEL:-1}" = "1" ]; then
  say "wheel: pip wheel --no-build-isolation --no-deps ."
  "$V" -m pip install -q ninja setuptools wheel build
  t0=$(date +%s)
  wheel_env=(env MINITORCH_EXT_NO_CUDA=1)
  [ "${INSTALL_CHECK_WHEEL_CUDA:-0}" = "1" ] && wheel_env=(env)
  if ! (cd "$WORK/src" && "${wheel_env[@]}" "$V" -m pip wheel -v --no-build-isolation --no-deps . -w "$WORK/dist") > "$WORK/build_wheel.log" 2>&1; then
    tail -30 "$WORK/build_wheel.log"; say "FAILED: pip wheel"; exit 1
  fi
  say "pip wheel: $(( $(date +%s) - t0 )) s, $(wc -l < "$WORK/build_wheel.log") lines (-v)"
  "$V" -m pip uninstall -q -y minitorch_ext
  "$V" -m pip install -q --no-deps "$WORK"/dist/minitorch_ext-*.whl
  "$V" -c "import zipfile, glob, sys; n = zipfile.ZipFile(glob.glob(sys.argv[1] + '/dist/*.whl')[0]).namelist(); bad = [f for f in n if f.split('/')[0] in ('kernels', 'models')]; sys.exit(f'top-level kernels/models in the wheel: {bad}' if bad else 0)" "$WORK"
  smoke "$V"
  say "sdist: python -m build --sdist --no-isolation"
  (cd "$WORK/src" && "$V" -m build --sdist --no-isolation -o "$WORK/dist" > "$WORK/build_sdist.log" 2>&1) || {
    tail -20 "$WORK/build_sdist.log"; say "FAILED: sdist"; exit 1; }
  "$V" - "$WORK" <<'PY'
import glob, subprocess, sys, tarfile
work = sys.argv[1]
names = {n.split("/", 1)[1] for n in tarfile.open(glob.glob(work + "/dist/*.tar.gz")[0]).getnames() if "/" in n}
tracked = subprocess.run(["git", "-C", work + "/src", "ls-files", "csrc", "kernels", "models", "minitorch_ext"],
                         capture_output=True, text=True, check=True).stdout.split()
missing = [f for f in tracked if f not in names]
if missing:
    sys.exit(f"sdist lacks {missing}")
print(f"[install_check] sdist has all {len(tracked)} source files of csrc/, kernels/, models/, minitorch_ext/")
PY
fi
say "all install checks passed"
