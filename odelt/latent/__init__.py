"""The decoder stage of latent models: VAEs (diffusers' AutoencoderKL "sd" and AutoencoderTiny
"taesd") loaded from diffusers safetensors or upstream's Flax msgpack (`vae`, `weights`,
`flax_msgpack`), and exported to one ONNX decoder graph per kind (`decoder_export`). Imported by
the exporter only when a bundle is given `--vae`; the runtime side (odelt.runtime.backends.decoder) is numpy
only."""
