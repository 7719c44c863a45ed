"""A run's life on this host: the supervisor claims queued runs with leases, starts each
leader from the forkserver, watches and finishes it, reads its tasks, and keeps what is
kept (retention). Imports engines/, host/, files/ and store/; nothing imports it but web/
and the command line."""
