#!/usr/bin/env bash
# Install a local Slurm for tests/test_slurm.py: Debian's slurmctld, slurmd, slurm-client and munge
# (22.05 on bookworm; ~15 s).  Idempotent: exits at once when the binaries are already there.
# Nothing is started or enabled here: the test starts its own munged/slurmctld/slurmd on localhost
# (tests/slurm_cluster.py) and stops them at the end; no systemd is needed.
# Usage: bash scripts/install_slurm.sh        (as root, or with sudo available)
set -euo pipefail
missing=0
for bin in slurmctld slurmd sbatch srun sinfo scontrol munged mungekey; do
  PATH=$PATH:/usr/sbin:/sbin command -v "$bin" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 0 ]; then
  echo "install_slurm.sh: slurm and munge already installed"
  exit 0
fi
SUDO=()
[ "$(id -u)" = 0 ] || SUDO=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
PATH=$PATH:/usr/sbin:/sbin slurmd -V
