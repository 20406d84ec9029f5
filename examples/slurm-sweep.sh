#!/bin/bash
# One seli sweep as a Slurm job array: array task I runs shard I of N, all writing into one
# output directory on the cluster's shared filesystem.
#
#   jobid=$(sbatch --parsable examples/slurm-sweep.sh sweep.toml runs/sweep)
#   sbatch --dependency=afterok:$jobid --wrap "seli sweep merge runs/sweep"
#
# A task that is preempted, requeued or resubmitted skips its completed points and resumes
# its interrupted ones from their checkpoints. Change --array and nothing else to change N.
#SBATCH --job-name=seli-sweep
#SBATCH --array=0-3
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=seli-sweep-%A_%a.log
set -euo pipefail
spec=${1:?usage: sbatch slurm-sweep.sh SWEEP.toml OUT_DIR}
out=${2:?usage: sbatch slurm-sweep.sh SWEEP.toml OUT_DIR}
seli=${SELI:-seli}
exec "$seli" sweep "$spec" --out "$out" \
    --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" \
    --jobs "${SLURM_CPUS_PER_TASK:-0}"
