"""The hostile-input tests read the exporter's tiny bundles (exports are the slow part)."""

from tests.exporter.conftest import tiny_bundle, tiny_ckpt  # noqa: F401  (fixtures)
