"""Blocks: one file per family. Every sequence mixer follows the block contract:

    __init__(d_model, layer_idx, **hyperparameters)
    forward(x: [B, T, d_model]) -> [B, T, d_model]                 parallel (training) form
    init_state(batch_size, device, dtype) -> state                 empty decode state
    step(x: [B, 1, d_model], state) -> ([B, 1, d_model], state)    one token of decoding
    state_size(seq_len) -> int                                     numbers a decode holds per sequence
                                                                   after seq_len tokens (a KV cache grows with it)

The sequence mixers but BaseConv, ZoologyBaseConv and MoA also follow the probe contract of `arch.probe`
(``attention_matrix``, ``pre_projection``, ``head_mask``): their attention probabilities or implicit
attention matrix, for `eval.probes` (which lists the layers it cannot probe).

Channel mixers (MLPs, MoE) map [B, T, d_model] to the same shape and are position-wise. Each
block's output projection back into the residual stream is named ``out_proj``: the language
model scales its initialisation by 1/sqrt(number of residual branches).

A block has one name: its file ``arch/blocks/<name>.py``, its block config ``conf/block/<name>.yaml``,
its model preset ``conf/model/<name>.yaml`` (where one exists) and its class, the same name in
CamelCase. Files that hold a family, and the presets named after a model rather than a block:

    conf/block/<name>.yaml   file                  class              model presets using it
    attention                attention.py          Attention          transformer, based (swa), griffin, samba, h3, jamba
    attention_variants       attention.py          Attention          (every option at once: the contract test)
    base_conv                base_conv.py          BaseConv           based, based_tradeoff (Based's gated short conv)
    zoology_base_conv        base_conv.py          ZoologyBaseConv    base_conv, zoology_fig2 (Zoology's BaseConv)
    cope                     attention.py          Attention          cope (position: cope)
    diff_attention           attention.py          Attention          diff_transformer (score: differential)
    fox                      attention.py          Attention          fox (forgetting attention)
    gla                      gla.py                GLA                gla
    h3                       h3.py                 H3                 h3
    hgrn2                    hgrn2.py              HGRN2              hgrn2
    kv_shift                 attention.py          Attention          kv_shift
    linear_attention         linear_attention.py   LinearAttention    linear_attention, based
    mamba                    mamba.py              Mamba              mamba, jamba, samba
    mamba2                   mamba2.py             Mamba2             mamba2
    retnet                   retnet.py             RetNet             retnet
    mta                      attention.py          Attention          mta (mta_kernel, mta_head_mix)
    rglru                    griffin.py            RGLRUBlock         griffin, hawk
    rwkv6                    rwkv6.py              RWKV6TimeMix       rwkv6
    rwkv6_channel            rwkv6.py              RWKV6ChannelMix    rwkv6
    rwkv7                    rwkv7.py              RWKV7TimeMix       rwkv7
    rwkv7_channel            rwkv6.py              RWKV6ChannelMix    rwkv7 (receptance=False, expansion 4, depth_power 4)
    selective                attention.py          Attention          selective (selective: true)
    selective_budget         attention.py          Attention          (selective attention with a context budget)
    query_temperature        attention.py          Attention          (temperature: query_position)
    sigmoid_attention        attention.py          Attention          (score: sigmoid)
    sink_attention           attention.py          Attention          (sink: learnable)
    swiglu                   mlp.py                SwiGLU             (channel mixer)
    gelu_mlp                 mlp.py                GeluMLP            (channel mixer)
    identity                 mlp.py                Identity           (channel mixer)
    mla                      mla.py                MLA                deepseek
    moa                      moa.py                MoA                moa, bam
    moh                      moh.py                MoH                moh
    moe                      moe.py                MoE                moe, deepseek, jamba, minimax, gla_moe, samba_moe, bam (channel mixer)

Routers, top-k selection and the mixtures' auxiliary losses live in `arch.blocks.routing`; shared
initialisation helpers in `arch.blocks.init`; the ops the blocks run on in `arch.ops`.
"""
