#!/usr/bin/env bash
# Table 1 at a stated budget (issue "the crVAE must learn", item 4): the six MNIST rows trained for the same number
# of epochs with the recipes' defaults, validation IWAE-5 curves, each row's test NLL (best validation checkpoint) with
# K importance samples on images spread over the statically binarized test set, and the curves figure (redrawn after
# each row trains), and after every stage the report (python -m crvae_tf.evaluate --report: gin/README.md's generated Table 1
# block and docs/results.md, written into the tree the script runs from). Every stage resumes: rerun the same command after an interruption (training continues from its last checkpoint, evaluation from its last finished batch, and
# finished stages are skipped).
#
#   scripts/table1_budget.sh [RUNS_ROOT]          # default RUNS_ROOT: ../runs_table1 (outside the repository)
#
# Budget knobs (environment): EPOCHS (3), K (1000), NUM_TEST (1000), PRECISION (mixed_bfloat16).
# Data: ../shared/data/mnist/mnist.npz (training) and ../shared/data/binarized_mnist/binarized_mnist.npz (test).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-../runs_table1}
EPOCHS=${EPOCHS:-3}
K=${K:-1000}
NUM_TEST=${NUM_TEST:-1000}
PRECISION=${PRECISION:-mixed_bfloat16}
PY=${PY:-.venv/bin/python}
MNIST=${MNIST:-../shared/data/mnist/mnist.npz}
BINARIZED=${BINARIZED:-../shared/data/binarized_mnist/binarized_mnist.npz}
STEPS=$((EPOCHS * 390))            # 50,000 training images at batch 128: 390 steps per epoch
ROWS="vae cvae bcvae crvae_inference crvae_generation crvae"
# Stage order: the headline comparison (VAE vs crVAE: training and NLL) first, then the ablations' training before
# their long NLL estimates, so the curves fill in early. Override with STAGES="train:vae eval:vae ...".
STAGES=${STAGES:-"train:vae eval:vae train:crvae eval:crvae train:cvae train:bcvae train:crvae_inference
  train:crvae_generation eval:cvae eval:bcvae eval:crvae_inference eval:crvae_generation"}
mkdir -p "$ROOT"

train() {
  local row=$1
  echo "== train $row: $STEPS steps ($EPOCHS epochs), $PRECISION" >&2
  "$PY" -m crvae_tf.train --gin_file="gin/mnist_$row.gin" --model_dir="$ROOT/$row" \
    --gin_bindings="dataset.local_path='$MNIST'" --gin_bindings="train.max_steps=$STEPS" \
    --gin_bindings="model.precision='$PRECISION'" --gin_bindings="train.validation_every_steps=130" \
    --gin_bindings="train.num_validation_images=2000" --gin_bindings="train.progress_bar=False" \
    --gin_bindings="train.checkpoint_every_steps=130" >> "$ROOT/$row.train.log" 2>&1
}

evaluate() {
  local row=$1
  if ls "$ROOT/$row/eval/"test-step*-k$K-n$NUM_TEST.json > /dev/null 2>&1; then return; fi
  echo "== evaluate $row: K=$K on $NUM_TEST test images, float32" >&2
  "$PY" -m crvae_tf.evaluate --model_dir="$ROOT/$row" --checkpoint=best --num_importance_samples=$K \
    --max_images=$NUM_TEST --gin_bindings="eval_dataset.local_path='$BINARIZED'" >> "$ROOT/$row.eval.log" 2>&1
}

curves() {  # the rows trained so far (the figure is redrawn after every training stage)
  local runs="" row
  for row in $ROWS; do
    if [ -f "$ROOT/$row/progress.json" ]; then runs="$runs,$row=$ROOT/$row"; fi
  done
  "$PY" -m crvae_tf.evaluate --curves="${runs#,}" --curves_metric=iwae_5 --curves_out=docs/table1_curves.png \
    --curves_title="MNIST, $EPOCHS epochs, batch 128, $PRECISION, 2 CPU cores; validation IWAE-5 on 2,000 images"
}

report() {  # gin/README.md's generated Table 1 block and docs/results.md, from the runs (after every stage)
  "$PY" -m crvae_tf.evaluate --report="$ROOT" --report_out=docs/results.md --update_markdown=gin/README.md
}

for stage in $STAGES; do
  case $stage in
    train:*) train "${stage#train:}"; curves || echo "(curves not drawn; training goes on)" >&2 ;;
    eval:*) evaluate "${stage#eval:}" ;;
    *) echo "unknown stage '$stage' (train:ROW or eval:ROW)" >&2; exit 2 ;;
  esac
  report || echo "(report not written; the runs go on)" >&2
done
