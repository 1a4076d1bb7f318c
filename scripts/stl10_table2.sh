#!/usr/bin/env bash
# Table 2 (paper Sec. 4.5): one semi-supervised run per official STL-10 fold, each fold's evaluation (checkpoint
# selected on the 4,000 labeled images outside the fold, scored on the 8,000 test images: python -m crvae_tf.evaluate
# --metrics=classification), then the report whose Table 2 pools the folds, mean ± std over the folds beside the
# paper's number (python -m crvae_tf.evaluate --report; RUNS_ROOT/table2.md, its Table 2 section also printed).
# Every stage resumes: training continues from its last checkpoint, and a fold that already has
# eval/classification-fold<k>-step<S>.json is not evaluated again (delete it to evaluate the fold again).
#
#   scripts/stl10_table2.sh RECIPE STL10_BINARY_DIR [RUNS_ROOT]
#   scripts/stl10_table2.sh gin/stl10_crvae_gan.gin /data/stl10_binary runs/stl10_crvae
#   scripts/stl10_table2.sh gin/stl10_vae_gan.gin /data/stl10_binary runs/stl10_vae
#
# Environment: FOLDS (default "0 1 2 3 4 5 6 7 8 9"), PY (.venv/bin/python), BINDINGS (extra gin bindings, one per
# line, for every fold's training, e.g. "train.max_steps=2000" for a budget run).
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=$1
DATA=$2
ROOT=${3:-runs/stl10}
FOLDS=${FOLDS:-"0 1 2 3 4 5 6 7 8 9"}
PY=${PY:-.venv/bin/python}
for k in $FOLDS; do
  extra=()
  while IFS= read -r line; do [ -n "$line" ] && extra+=(--gin_bindings="$line"); done <<< "${BINDINGS:-}"
  "$PY" -m crvae_tf.train --gin_file="$RECIPE" --model_dir="$ROOT/fold$k" \
      --gin_bindings="dataset.local_path='$DATA'" --gin_bindings="dataset.fold=$k" "${extra[@]}"
  if ! compgen -G "$ROOT/fold$k/eval/classification-fold*.json" > /dev/null; then
    "$PY" -m crvae_tf.evaluate --model_dir="$ROOT/fold$k" --metrics=classification
  fi
done
"$PY" -m crvae_tf.evaluate --report="$ROOT" --report_out="$ROOT/table2.md"
if [ -f "$ROOT/table2.md" ]; then
  sed -n '/^## Table 2/,/^The paper/p' "$ROOT/table2.md"
fi
