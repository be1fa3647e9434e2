#!/usr/bin/env bash
# The GPU checks in one script, for the day a GPU machine is lent (issue 27): the gpu-marked tests
# (a bit-exact resume with trainer.deterministic=true, bf16/fp16 and the fp16 penalty,
# channels_last and compile with fused Adam, four jobs of a jobs_per_gpu=4 sweep on one GPU at
# once per nvidia-smi), then throughput on CUDA, fused seeds and the sweep benchmark. It prints the table for
# BENCHMARKS.md and copies the logs to $OUT when that is set.
#
# The device tool's image has torch but not hydra-core, omegaconf (antlr4-python3-runtime),
# mlxtend, ray, hydra-ray-launcher, hydra-submitit-launcher or submitit. Download their
# wheels here first, into the ignored .whl/ (the device README gives the pip download command:
# python 3.12, manylinux x86_64), carry .whl, and this script installs them. Without ray and
# its launcher, the sweep test skips and the sweep benchmark is left out, said so in the table.
#
#   bash benchmarks/gpu_check.sh            # about 5 minutes on an H100/H200
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing the carried wheels failed"; exit 1; }
fi
export PYTHONPATH="/tmp/site:$PWD:$PWD/tests:${PYTHONPATH:-}"
export PATH="/tmp/site/bin:$PATH" PYTHONUNBUFFERED=1
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
versions=$(python3 -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}')")

python3 -m pytest -m gpu -p no:cacheprovider -q -rs tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
tests=$(tail -1 "$out/gpu_tests.log")

python3 benchmarks/throughput.py --device cuda 2>&1 | tee "$out/throughput.log"
# Fused seeds (issue 31): the target is fused >= 10x one after another at N = 20 for dcgan_small.
python3 benchmarks/fused_seeds.py --device cuda --members 1,4,8,20 2>&1 | tee "$out/fused_seeds.log"
if python3 -c "import ray, hydra_plugins.hydra_ray_launcher" 2>/dev/null; then
  python3 benchmarks/sweep.py --jobs 8 --steps 2000 --jobs-per-gpu 4 2>&1 | tee "$out/sweep.log"
  sweep=$(grep '^| [0-9]' "$out/sweep.log" | tail -1)
else
  sweep="not run: ray and hydra-ray-launcher are not installed here (carry their wheels)"
fi

echo
echo "## GPU check, $(date -u +%Y-%m-%d): $gpu; $versions"
echo
echo "- gpu-marked tests (\`pytest -m gpu tests/test_gpu.py\`): $tests"
echo "- sweep, 8 jobs x 2000 steps, sequential vs jobs_per_gpu=4 (\`benchmarks/sweep.py\`): $sweep"
echo
echo "Throughput (\`benchmarks/throughput.py --device cuda\`):"
echo
grep '^|' "$out/throughput.log"
echo
echo "Fused seeds (\`benchmarks/fused_seeds.py --device cuda\`):"
echo
grep '^|' "$out/fused_seeds.log"
