"""The research harness: what produces the project's data and figures (the generated world and pretext, the
protocols, benchmarks, studies, reproductions, speed benches). It imports the product (``wilss``, ``models``, ``app``);
the product never imports it."""
