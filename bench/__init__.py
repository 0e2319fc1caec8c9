"""Benchmarks: each module has ``main(argv) -> int`` and is run by `selfpose bench NAME`."""
