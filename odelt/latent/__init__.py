"""The decoder stage of latent models: VAEs (diffusers' AutoencoderKL "sd" and AutoencoderTiny
"taesd") loaded from diffusers safetensors or upstream's Flax msgpack (`vae`, `weights`,
`flax_msgpack`), and the small VAE the digits-latent model is trained with (`train`). The export of
decoder graphs lives in odelt.exporter.decoder; the runtime side (odelt.runtime.backends.decoder) is
numpy only."""

from odelt.lazy import face

__all__, __getattr__, __dir__ = face(__name__, {
    "odelt.latent.vae": ("KINDS", "Vae", "load_vae", "parse_vae_option", "parse_vae_options"),
    # the trained digits VAE (AutoencoderKL) next to vae.py's loader of any VAE kind
    "odelt.latent.train": ("VAEConfig", "train_vae", "load_trained_vae=load_vae", "encode_scaled",
                           "decode_scaled"),
})
