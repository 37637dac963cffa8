#!/bin/bash
# Slurm Prolog for mpistage (slurm.conf: Prolog=/path/to/prolog.sh and PrologFlags=Alloc,
# so it runs on every node of a job as soon as the job is allocated, before the batch
# script starts): make a per-job directory in node-local scratch, owned by the job's
# user and private to it, at $SCRATCH_ROOT/job-$SLURM_JOB_ID. epilog.sh removes it.
#
# Slurm gives a prolog no user environment; set the scratch root here or in a wrapper:
#   MPISTAGE_SCRATCH_ROOT=/local exec /opt/mpistage/jobscripts/prolog.sh
# A non-zero exit drains the node (Slurm's rule for prologs): a node whose scratch is
# missing or read-only should not take jobs that expect it.
set -u
root=${MPISTAGE_SCRATCH_ROOT:-/scratch}
[ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_JOB_UID:-}" ] || exit 0
group=${SLURM_JOB_GID:-$(id -g "$SLURM_JOB_UID" 2>/dev/null || echo "$SLURM_JOB_UID")}
dir=$root/job-$SLURM_JOB_ID
# Scratch is world-writable: a user may have put something (a symlink, say) where the
# directory goes. Remove it without following links, then create the directory afresh;
# mkdir fails rather than use anything that appears in between.
rm -rf --one-file-system -- "$dir"
mkdir -m 0700 -- "$dir" && chown -h -- "$SLURM_JOB_UID:$group" "$dir" || {
    echo "mpistage prolog: cannot create $dir for job $SLURM_JOB_ID" >&2
    exit 1
}
exit 0
