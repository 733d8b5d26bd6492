"""Benchmark commands (``metammf-dist bench ...``): figures measured side by side in one run."""

# glibc mmaps every block of 64 KiB or more and unmaps it when freed, so the RSS tracks live bytes (the
# planner's ``allocator="live"``): the environment of the benchmarks' memory measurements.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
