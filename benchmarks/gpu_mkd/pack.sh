#!/usr/bin/env bash
# Pack what benchmarks/gpu_mkd/run.sh needs on a GPU machine that reaches no package registry and takes at most
# 64 MiB of files (the device tool's limit): the Python packages its image lacks (cp312 wheels), the packaged MiniLM
# teacher as fp16 (xz; run.sh restores fp32), and the prepared data and transfer sets of a workspace that has run
# `dvc repro augment` (uncompressed Parquet in an xz tar: 17 MB for the five GLUE tasks instead of 33 MB of Snappy).
# Usage, from the repository root with the project venv active: benchmarks/gpu_mkd/pack.sh WORKSPACE [DEST]
# (run.sh reads .gpu/, the default DEST; add /.gpu/ to .git/info/exclude so it travels only when carried)
set -euo pipefail
workspace=$1
dest=${2:-.gpu}
mkdir -p "$dest/whl" "$dest/minilm"
pip list --format=freeze 2>/dev/null | grep -i -E '^(dvc|dvc-render|dvc-studio-client|dvclive|flatten-dict|funcy|ruamel\.yaml|voluptuous|wcwidth|pydantic|pydantic_core|annotated-types|typing-inspection)==' \
  | xargs python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest/whl"
python3 - "$dest" <<'PY'
import lzma, shutil, sys
from pathlib import Path

from safetensors.torch import load_file, save

from pipeline.serving.teacher import resolve_checkpoint

source, dest = Path(resolve_checkpoint("packaged:all-MiniLM-L6-v2")), Path(sys.argv[1])
for name in ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
    shutil.copy(source / name, dest / "minilm" / name)
weights = load_file(source / "model.safetensors")
half = save({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()})
(dest / "minilm_fp16.safetensors.xz").write_bytes(lzma.compress(half, preset=9))
PY
stage=$(mktemp -d)
mkdir -p "$stage/data/augmented"
cp -r "$workspace/data/prepared" "$stage/data/"
python3 - "$workspace" "$stage" <<'PY'
import sys
from pathlib import Path

import pyarrow.parquet as pq

workspace, stage = Path(sys.argv[1]), Path(sys.argv[2])
for path in (workspace / "data" / "augmented").glob("*.parquet"):
    pq.write_table(pq.read_table(path), stage / "data" / "augmented" / path.name, compression="none")
PY
tar cf - -C "$stage" data | xz -T2 -9e > "$dest/data.tar.xz"
rm -rf "$stage"
cp benchmarks/gpu_mkd/run.sh benchmarks/gpu_mkd/params_variants.py "$dest/"
du -cb "$dest" | tail -1
