from metammf_dist.cli import entry

entry()
