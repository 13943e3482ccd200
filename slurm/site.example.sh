# An example of slurm/site.sh: what your cluster adds before the harness runs. Copy it to slurm/site.sh and edit
# it; every script in slurm/ sources slurm/site.sh (when present) from the repository root, in the batch job and
# on every node of a multi-node job. It is a bash fragment: no #SBATCH lines (sbatch reads those only from the
# submitted script; see "Adapting to your cluster" in docs/slurm.md for the partition and the account).

# module load cuda/12.4 gcc/12          # the modules the training needs
# . /shared/envs/harness/bin/activate  # a venv of the site's (else the repository's .venv is activated)
# export HF_HUB_CACHE=/shared/hf-cache # where pretrained timm weights were fetched once
# export NCCL_SOCKET_IFNAME=ib0        # the network NCCL should use between nodes
