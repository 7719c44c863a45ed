"""A run's directory: where everything of one run lives (paths), opening files beneath it
without following what the run planted (beneath), its outputs as served, and their checksums.
Imports only the package's base modules."""
