#!/usr/bin/env bash
# Study 6, the NPU question (fixed before it was run; PHASES_OVERVIEW.md, study 6): what does each NPU-friendly
# replacement of seeds 000-003 cost in rate and quality, and what does QAT int8 add, measured from a trained model?
# Every run starts from the shipped base model (baselines/pretrained/bmshj2018-factorized-small.pt, GDN/IGDN,
# 36,000 steps at λ 0.0048) and trains STEPS steps in all (1200: batch 4 of 64 px crops of the 6 training photos,
# lr 1e-3 cosine with 20 warm-up steps, validation on the 2 validation photos); the 4 test photos are read once, by
# the final real-bitstream evaluation. 3 seeds x 4 λ (CompressAI's 0.0018, 0.0035, 0.0067 and 0.013 around the base's;
# the design fixed at d2ef1b8 had the first three: 0.013 was added after that run, before anything was tuned on it,
# because cubic BD needs 4 points per curve and the ReLU and Upsample curves did not reach GDN's qualities):
#   gdn           the control: the GDN model fine-tuned alone, λ·255²·MSE + bpp (fine-tuning itself moves quality)
#   relu          seed 000: encoder GDN -> ReLU; the replaced layers train on seed 000's reconstruction loss
#                 (0.4·L1 + 0.6·(1 - MS-SSIM)) for STEPS/2, then every layer on the R-D loss for STEPS/2
#   gdnish_rd     seeds 002/003: every GDN/IGDN -> GDNishLite (identity-initialised), all layers, R-D loss
#   gdnish_recon  the same blocks, trained first as relu is (reconstruction loss, replaced layers), then R-D
#   upsample      seed 001: decoder ConvTranspose2d -> Upsample + Conv2d, distilled from the base model (its
#                 teacher; 1.0·L1 + 0.2·(1 - MS-SSIM) against the teacher's output) for STEPS/2, then every
#                 layer on the R-D loss for STEPS/2
#   <arm>_qat     seed 002's QAT: that arm's final model, INT8 fake quantization of g_a and g_s (entropy model and
#                 hyperprior in float), QAT_STEPS more steps at lr 1e-4 (observers calibrate for the first quarter,
#                 every scale fixed from three quarters on), evaluated as the quantised model
# Outcomes: each arm's BD-PSNR and BD-rate against gdn (pchip and cubic, 95 % t-intervals over seeds, paired by
# seed; BD-rate exists only where the curves share qualities),
# each QAT arm against its float arm (what QAT costs), PSNR and MS-SSIM per λ; whether the distillation
# stage reaches seed 001's claim (within 0.1 dB PSNR of its teacher, MS-SSIM to the teacher >= 0.995) and after how
# many steps (baselines.npu_claims); the deployment facts of each arm's trained model (benchmarks/npu_deploy.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
RUNS_DIR="${RUNS:-runs/studies}/npu"
BUNDLE="${RESULTS:-results}/study-npu"
STEPS="${STEPS:-1200}"
QAT_STEPS="${QAT_STEPS:-200}"
half=$((STEPS / 2))
relu="--act relu --replace_parts encoder"
gdnish="--act gdnish --replace_parts all"
recon="--loss_type recon --alpha_l1 0.4 --train_scope replaced --steps $half"
qat="--qat true --qat_scope all --qat_exclude_entropy true --qat_calib_steps $((QAT_STEPS / 4))
     --qat_freeze_after $((3 * QAT_STEPS / 4)) --steps $QAT_STEPS --lr 1e-4"
arms=(--arm "gdn=--optimizer adam"
      --arm "relu=$relu $recon --then $relu --train_scope all --steps $half"
      --arm "gdnish_rd=$gdnish --train_scope all"
      --arm "gdnish_recon=$gdnish $recon --then $gdnish --train_scope all --steps $half"
      --arm "upsample=--distill --decoder_upsample true --steps $half --then --decoder_upsample true --train_scope all --steps $half")
pairs=()
for arm in gdn relu gdnish_rd gdnish_recon upsample; do
  arms+=(--arm "${arm}_qat=--after $arm $qat")
  [ "$arm" = gdn ] || pairs+=(--pair "${arm}_qat:$arm")  # gdn_qat is compared with gdn anyway
done
"$PY" -m baselines.compare --out_dir "$RUNS_DIR" --bundle_dir "$BUNDLE" \
  --title "Study 6: what each NPU-friendly replacement costs (fine-tuning the shipped base, GDN as reference)" \
  --start_checkpoint baselines/pretrained/bmshj2018-factorized-small.pt --anchors "" \
  --lambdas "${LAMBDAS:-0.0018,0.0035,0.0067,0.013}" --seeds "${SEEDS:-0,1,2}" --jobs "${JOBS:-2}" "${arms[@]}" \
  --model bmshj2018-factorized-small --steps "$STEPS" --batch_size 4 --patch_size 64 \
  --val_patch_size "${VAL_PATCH:-256}" --lr 1e-3 --sched cosine --lr_warmup_steps 20 --val_every "${VAL_EVERY:-50}" \
  --recon_every 0 --num_workers 0 "$@"
"$PY" -m baselines.stats "$BUNDLE" "${pairs[@]}"
"$PY" -m baselines.npu_claims "$RUNS_DIR" "$BUNDLE"
"$PY" -m benchmarks.npu_deploy "$RUNS_DIR" --lambda "${DEPLOY_LAMBDA:-0.0035}" --json "$BUNDLE/deployment.json" \
  --markdown "$BUNDLE/deployment.md"
