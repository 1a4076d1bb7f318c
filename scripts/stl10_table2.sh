#!/usr/bin/env bash
# Table 2 (paper Sec. 4.5): one semi-supervised run per official STL-10 fold, then the per-fold evaluation (checkpoint
# selected on the 4,000 labeled images outside the fold, scored on the 8,000 test images) and the Table 2 line, mean
# ± std over the folds (python -m crvae_tf.classify). Every stage resumes: training continues from its last
# checkpoint, and a fold that already has eval/classification-fold<k>-step<S>.json is not evaluated again.
#
#   scripts/stl10_table2.sh RECIPE STL10_BINARY_DIR [RUNS_ROOT] [ROW_NAME]
#   scripts/stl10_table2.sh gin/stl10_crvae_gan.gin /data/stl10_binary runs/stl10_crvae crVAE
#   scripts/stl10_table2.sh gin/stl10_vae_gan.gin /data/stl10_binary runs/stl10_vae "Standard VAE"
#
# Environment: FOLDS (default "0 1 2 3 4 5 6 7 8 9"), PY (.venv/bin/python), BINDINGS (extra gin bindings, one per
# line, for every fold's training, e.g. "train.max_steps=2000" for a budget run).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=$1
DATA=$2
ROOT=${3:-runs/stl10}
NAME=${4:-ours}
FOLDS=${FOLDS:-"0 1 2 3 4 5 6 7 8 9"}
PY=${PY:-.venv/bin/python}
DIRS=()
for k in $FOLDS; do
  extra=()
  while IFS= read -r line; do [ -n "$line" ] && extra+=(--gin_bindings="$line"); done <<< "${BINDINGS:-}"
  "$PY" -m crvae_tf.train --gin_file="$RECIPE" --model_dir="$ROOT/fold$k" \
      --gin_bindings="dataset.local_path='$DATA'" --gin_bindings="dataset.fold=$k" "${extra[@]}"
  DIRS+=("$ROOT/fold$k")
done
"$PY" -m crvae_tf.classify --model_dirs="$(IFS=,; echo "${DIRS[*]}")" --name="$NAME" --output="$ROOT/table2.json"
