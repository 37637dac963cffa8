#!/bin/bash
# Slurm Epilog for mpistage (slurm.conf: Epilog=/path/to/epilog.sh): runs as root on
# every node of a job when it ends, also when it was cancelled, timed out or killed.
# Removes the job's directories in node-local scratch (prolog.sh's job-$SLURM_JOB_ID and
# stage-and-run.sbatch's mpistage-$SLURM_JOB_ID) and any temp file that a killed
# mpistage run of the job's user left elsewhere in scratch
# (".NAME.HOST.PID.XXXXXXXX.mpistage-tmp", a file, or a directory for a tree;
# removed only when process PID is gone, so a
# run of another job of the same user on this node keeps its file).
#
# Slurm gives an epilog no user environment; set the scratch root here or in a wrapper:
#   MPISTAGE_SCRATCH_ROOT=/local exec /opt/mpistage/jobscripts/epilog.sh
set -u
root=${MPISTAGE_SCRATCH_ROOT:-/scratch}
[ -n "${SLURM_JOB_ID:-}" ] || exit 0
for dir in "$root/job-$SLURM_JOB_ID" "$root/mpistage-$SLURM_JOB_ID" "/tmp/mpistage-$SLURM_JOB_ID"; do
    [ -e "$dir" ] || [ -L "$dir" ] || continue
    rm -rf --one-file-system -- "$dir"
done
[ -n "${SLURM_JOB_UID:-}" ] && [ -d "$root" ] || exit 0
host=$(hostname)
find "$root" -xdev -maxdepth 4 \( -type f -o -type d -o -type l \) -name '.*.mpistage-tmp' \
    -user "$SLURM_JOB_UID" -prune -print0 2>/dev/null |
while IFS= read -r -d '' temp; do
    name=${temp##*/}
    stem=${name%.*.mpistage-tmp}          # .NAME.HOST.PID
    pid=${stem##*.}
    case "$stem" in *".$host.$pid") ;; *) continue ;; esac   # made on another host
    [[ $pid =~ ^[0-9]+$ ]] && [ ! -e "/proc/$pid" ] && rm -rf --one-file-system -- "$temp"
done
exit 0
