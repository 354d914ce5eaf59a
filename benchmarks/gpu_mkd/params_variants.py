"""params.yaml for the GPU run's shared stages, and one workspace per MKD run (budget or all originals, x arch)."""

import os
from pathlib import Path

import yaml

params = yaml.safe_load(Path("params.yaml").read_text())
params["teacher"]["checkpoint"] = ".gpu/minilm"  # the packaged MiniLM, carried as fp16 and restored to fp32
params["score"]["batch_size"] = 512
params["mkd"]["max_originals_per_task"] = None  # mt_score scores every row; each MKD run applies its own budget
params["mt_teacher"]["build"] = ["multitask"]  # this run measures MKD with its own teacher (`preset paper`)
params["mkd"]["teacher"] = "multitask"
if os.environ.get("SMOKE"):  # a CPU rehearsal of this script on tiny data: one epoch everywhere
    params["teacher"]["epochs"] = 1
    for training in params["mkd"]["training"].values():
        training["epochs"] = 1
Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

for variant, budget, transformer_budget in (("budget", 8000, 2000), ("all", None, None)):
    for architecture in ("biattentive", "transformer", "bilstm"):
        ws = Path(f"ws_{variant}_{architecture}")
        (ws / "models").mkdir(parents=True, exist_ok=True)
        os.symlink("../data", ws / "data")
        os.symlink("../../models/mt_teacher", ws / "models" / "mt_teacher")
        variant_params = yaml.safe_load(yaml.safe_dump(params))
        variant_params["threads"] = 2
        variant_params["mkd"]["max_originals_per_task"] = budget
        variant_params["mkd"]["training"]["transformer"]["max_originals_per_task"] = transformer_budget
        (ws / "params.yaml").write_text(yaml.safe_dump(variant_params, sort_keys=False))
        print(ws, "budget", budget, "transformer budget", transformer_budget)
