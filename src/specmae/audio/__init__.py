"""Audio and front-ends: decoding, resampling, log-mel spectrograms, the built-in corpus.

    decode.py    audio files -> mono float32 waveforms at the model rate; finding audio files
    frontend.py  waveforms -> log-mel (F, T): the front-end configuration and its implementations
    synth.py     the built-in labelled corpus generator
"""

from .decode import AUDIO_EXTENSIONS, AudioError, check_waveform, find_audio_files, load_audio, resample
from .frontend import FRONTENDS, FrontendConfig, LogMelFrontend, build_frontend, mel_filterbank, reflect_indices

__all__ = ["AUDIO_EXTENSIONS", "FRONTENDS", "AudioError", "FrontendConfig", "build_frontend", "LogMelFrontend", "check_waveform",
           "find_audio_files", "load_audio", "mel_filterbank", "reflect_indices", "resample"]
