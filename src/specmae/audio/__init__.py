"""Audio and front-ends: decoding, resampling, log-mel spectrograms, the built-in corpus.

    decode.py    audio files -> mono float32 waveforms at the model rate; finding audio files
    inputs.py    audio given to the Python API (samples, batches, lists, paths) -> checked clips at the model rate
    stream.py    audio files read in pieces at the model rate (long files in `specmae visualize`)
    frontend.py  waveforms -> log-mel (F, T): the front-end configuration, the framing both front-ends share
    maskspec.py  MaskSpec's (PaSST's) front-end: pre-emphasis, Kaldi mel banks, rescaled log
    logmel.py    MSM-MAE's log-mel front-end, and build_frontend (a config's front-end)
    invert.py    log-mel back to audio: mel inversion and Griffin-Lim, for listening to reconstructions
    synth.py     the built-in labelled corpus generator
"""

from .decode import (AUDIO_EXTENSIONS, AudioError, check_waveform, find_audio_files, find_audio_paths, load_audio,
                     resample)
from .frontend import FRONTENDS, FrontendConfig, frame_span, reflect_indices
from .inputs import Clips, check_sample_rate, read_clips
from .invert import invert_lms
from .logmel import LogMelFrontend, build_frontend, mel_filterbank
from .maskspec import MaskSpecFrontend, kaldi_mel_banks

__all__ = ["AUDIO_EXTENSIONS", "FRONTENDS", "AudioError", "Clips", "FrontendConfig", "build_frontend", "LogMelFrontend",
           "check_sample_rate", "check_waveform", "find_audio_files", "find_audio_paths", "frame_span", "invert_lms", "kaldi_mel_banks", "load_audio", "MaskSpecFrontend", "mel_filterbank",
           "read_clips", "reflect_indices", "resample"]
