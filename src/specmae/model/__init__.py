"""The model: configurations and presets, the ViT encoder, and the objectives wrapped around it.

    presets.py  EncoderConfig, DecoderConfig, ModelConfig; sizes and <F>x<T>p<pf>x<pt> presets
    vit.py      the standalone ViT encoder
    mae.py      the masked-autoencoder objective wrapped around the encoder
    classifier.py  the fine-tuning classifier wrapped around the encoder
"""
