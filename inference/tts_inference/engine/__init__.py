"""Speech synthesis engines behind one interface; only engine modules import torch and f5_tts."""
