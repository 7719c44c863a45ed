"""What this host gives a run: the sandbox (bwrap), limits (cgroups), processes, its own
filesystem (loop images), containers (Podman, the image store and its pulls) and the batch
system (Slurm). Imports files/ and store/ below it."""
