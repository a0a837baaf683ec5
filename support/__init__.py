"""What the demo, the tests and the benchmarks share but production never runs: the synthetic
corpus generator (``support.synthetic``). It sits outside the stages so a curation worker
does not ship test-media code, and the import contracts (``lint-imports``) keep the core and
the stages from importing it."""
