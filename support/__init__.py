"""What the demo, the tests and the benchmarks share but production never runs: the synthetic
corpus generator (``support.synthetic``), burned-in text over video (``support.overlays``)
and the benchmarks' timing of work on every core at once (``support.together``). It sits
outside the stages so a curation worker does not ship test-media code, and the import
contracts (``lint-imports``) keep the core and the stages from importing it."""
