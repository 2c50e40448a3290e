"""Blocks: one file per family. Every sequence mixer follows the block contract:

    __init__(d_model, layer_idx, **hyperparameters)
    forward(x: [B, T, d_model]) -> [B, T, d_model]                 parallel (training) form
    init_state(batch_size, device, dtype) -> state                 empty decode state
    step(x: [B, 1, d_model], state) -> ([B, 1, d_model], state)    one token of decoding
    state_size(seq_len) -> int                                     numbers a decode holds per sequence
                                                                   after seq_len tokens (a KV cache grows with it)

Channel mixers (MLPs, MoE) map [B, T, d_model] to the same shape and are position-wise. Each
block's output projection back into the residual stream is named ``out_proj``: the language
model scales its initialisation by 1/sqrt(2 n_layers).
"""
