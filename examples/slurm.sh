#!/bin/bash
# Data-parallel bioprop on SLURM: 4 nodes x 8 GPUs, one torchrun per node.
#SBATCH --job-name=bioprop-imagenet-dtp
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --requeue                      # pre-empted jobs restart; --resume continues them exactly
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
    --rdzv-backend c10d --rdzv-endpoint "$head_node:29500" --rdzv-id "$SLURM_JOB_ID" \
    -m bioprop train --preset imagenet-lc-dtp-parallel --batch-size 256 --device cuda \
    --data-dir /datasets --num-workers 8 --checkpoint-every 30min --out runs/imagenet-dtp --resume
