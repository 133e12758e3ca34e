"""Load test tool (`pta-load`) and benchmark harness (`make bench`) of the PTA stack."""
