"""fastgrad's measurements: the pytest-benchmark suite (test_*.py here, run with
``pytest bench/ --benchmark-only``) and the side-by-side comparison with peers
(``python bench/compare.py``). Nothing here is imported by the library."""
