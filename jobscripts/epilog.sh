#!/bin/bash
# Slurm Epilog (slurm.conf: Epilog=/path/to/epilog.sh): remove what a staging job left in
# node-local scratch, even when the job was killed before its own clean-up ran. Also
# removes stray temp files of an interrupted mpistage run (".NAME.XXXX.mpistage-tmp").
LOCAL=${LOCAL_SCRATCH:-/tmp}
[ -n "${SLURM_JOB_ID:-}" ] || exit 0
rm -rf -- "$LOCAL/mpistage-$SLURM_JOB_ID"
find "$LOCAL" -xdev -maxdepth 2 -name '.*.mpistage-tmp' -user "${SLURM_JOB_USER:-root}" \
    -delete 2>/dev/null
exit 0
