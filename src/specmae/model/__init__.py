"""The model: configurations and presets, the ViT encoder, the masked-autoencoder objective.

    presets.py  EncoderConfig, DecoderConfig, ModelConfig; sizes and <F>x<T>p<pf>x<pt> presets
    vit.py      the standalone ViT encoder
    mae.py      the masked-autoencoder objective wrapped around the encoder
"""
