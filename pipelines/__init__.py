"""Pipeline stages (verbs): prepare, build_semids, run; each exposes `main(args=None)`."""
