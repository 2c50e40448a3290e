"""mixerlab architectures: functional ops (`arch.ops`), blocks (`arch.blocks`) and the LM (`arch.lm`).

Plain PyTorch only: nothing here imports Lightning, `data` or `eval`.
"""
