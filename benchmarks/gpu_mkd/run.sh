#!/usr/bin/env bash
# Issue 18, GPU: the multi-task teacher, its logits for every transfer row, then the three MKD students with the
# default data budget and without it (all originals), six runs side by side on one GPU. Writes to $OUT.
set -u -o pipefail
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
DEADLINE=${DEADLINE:-555}   # seconds from start when every run must have stopped
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
stamp() { echo "[$(elapsed)s] $*" | tee -a "$OUT/timeline.txt"; }
finish() {
  stamp "packing results"
  tar czf "$OUT/results.tgz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='*.npy' \
    --exclude='*.onnx' --exclude='checkpoints' logs ws_*/dvclive ws_*/models/mkd dvclive 2>/dev/null
  stamp "done"
}
trap finish EXIT
mkdir -p logs
stamp "start on $(hostname)"
if [ -z "${SMOKE:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
nproc >> "$OUT/gpu.txt"
python3 -c "import torch, transformers, accelerate, dvclive, pydantic, pyarrow; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, \
'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__)" 2>&1 | tee -a "$OUT/gpu.txt"  || exit 1
mkdir -p data && tar xJf .gpu/data.tar.xz || exit 1
python3 - <<'EOF' || exit 1
import lzma

from safetensors.torch import load, save_file

weights = load(lzma.open(".gpu/minilm_fp16.safetensors.xz").read())
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}, ".gpu/minilm/model.safetensors")
EOF
python3 .gpu/params_variants.py || exit 1   # params.yaml (shared stages) and ws_*/params.yaml
stamp "mt_teacher"
python3 -m pipeline mt-teacher > logs/mt_teacher.log 2>&1 || { tail -30 logs/mt_teacher.log; exit 1; }
stamp "mt_score (every row of every task)"
for task in sst2 cola mrpc rte stsb; do
  python3 -m pipeline score --task $task --teacher multitask > logs/mt_score_$task.log 2>&1 &
done
wait
grep -h -i -E "error|Traceback" logs/mt_score_*.log | head
stamp "mkd: six runs side by side"
for ws in ws_*; do
  arch=${ws#ws_*_}
  left=$(( DEADLINE - $(elapsed) ))
  (cd $ws && timeout --signal=INT --kill-after=15 $left python3 -m pipeline mkd --student $arch \
     > ../logs/mkd_${ws#ws_}.log 2>&1; echo "$ws exit $? at $(( $(date +%s) - T0 ))s" >> ../logs/mkd_exit.txt) &
done
while [ -n "$(jobs -r)" ]; do sleep 20; nvidia-smi 2>/dev/null --query-gpu=utilization.gpu,memory.used --format=csv,noheader \
  >> logs/gpu_util.txt; done
wait
cat logs/mkd_exit.txt
for f in logs/mkd_*.log; do echo "== $f"; grep -E "transfer rows|fine-tuned|joint model kept|Error|error" $f | head -12; tail -2 $f; done
