#!/usr/bin/env python3
"""Write the PyTorch parity fixtures of `tests/layer.rs`: small `nn.MultiheadAttention` modules,
their inputs and PyTorch's outputs, one safetensors file per case in tests/fixtures/; and Llama
attention blocks (`llama_*.safetensors`: Hugging Face names under `model.layers.0.self_attn.`,
the input `x`, the block's output `out` computed in float64, see `llama_case`).

Each file holds the module's state_dict under PyTorch's names (what
`safetensors.torch.save_file(m.state_dict(), ...)` writes), the inputs `query`, `key`, `value`
(float32, batch first), the masks where the case has them (`key_padding_mask` and a boolean
`attn_mask` as uint8, 1 = masked; a float `attn_mask` as float32), and PyTorch's output `out`
(`need_weights=False`). The metadata gives `num_heads`, `is_causal` and the mask kinds. The
files are committed, so `cargo test` needs no Python; rerun this script (torch only: the
safetensors format is written here) to regenerate them.
"""

import json
import os
import struct

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")


def save(path, tensors, metadata):
    """The safetensors format: 8-byte header length, JSON header, raw little-endian data."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous().cpu()
        dtype = {torch.float32: "F32", torch.uint8: "U8"}[t.dtype]
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def case(name, e=32, heads=4, bias=True, kdim=None, vdim=None, b=2, nq=7, nk=None, self_attn=True,
         padding=False, mask=None, causal=False):
    torch.manual_seed(sum(name.encode()))  # stable across runs (str hashes are salted)
    m = torch.nn.MultiheadAttention(e, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    with torch.no_grad():  # the default init leaves biases 0: give them values
        for p in m.parameters():
            if p.dim() == 1:
                p.uniform_(-0.5, 0.5)
    nk = nq if nk is None else nk
    q = torch.rand(b, nq, e) * 2 - 1
    if self_attn:
        k = v = q
    else:
        k = torch.rand(b, nk, kdim or e) * 2 - 1
        v = torch.rand(b, nk, vdim or e) * 2 - 1
    kw, tensors, meta = {}, {}, {"num_heads": str(heads), "is_causal": str(int(causal)), "self_attention": str(int(self_attn))}
    if padding:
        pad = torch.zeros(b, nk, dtype=torch.bool)
        pad[0, -2:] = True
        pad[-1, 1] = True
        kw["key_padding_mask"] = pad
        tensors["key_padding_mask"] = pad.to(torch.uint8)
    if causal:
        kw["attn_mask"] = torch.ones(nq, nk, dtype=torch.bool).triu(1)
        kw["is_causal"] = True
    elif mask == "bool":
        am = torch.rand(nq, nk) < 0.3
        am[:, 0] = False  # no row fully masked (PyTorch gives NaN there, this crate 0)
        kw["attn_mask"] = am
        tensors["attn_mask"] = am.to(torch.uint8)
        meta["attn_mask"] = "bool"
    elif mask == "float":
        am = torch.where(torch.rand(nq, nk) < 0.3, float("-inf"), 0.0)
        am[:, 0] = 0.0
        kw["attn_mask"] = am
        tensors["attn_mask"] = am
        meta["attn_mask"] = "float"
    with torch.no_grad():
        out, _ = m(q, k, v, need_weights=False, **kw)
    tensors.update({n: p for n, p in m.state_dict().items()})
    tensors.update({"query": q, "key": k, "value": v, "out": out})
    save(os.path.join(OUT, f"mha_{name}.safetensors"), tensors, meta)
    print(name, {n: list(t.shape) for n, t in tensors.items()})


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def llama_case(name, e=64, heads=4, kv_heads=1, theta=10000.0, bias=False, b=2, n=9, start=0):
    """Hugging Face LlamaAttention's computation written out (transformers is not needed), in
    float64 from float32 weights and inputs: q/k/v projections, rotate-half rotary embeddings of
    positions start..start+n, K/V heads repeated for the query heads, causal softmax attention,
    o_proj."""
    torch.manual_seed(sum(name.encode()))
    d = e // heads
    w = {
        "q_proj.weight": torch.randn(heads * d, e) / e**0.5,
        "k_proj.weight": torch.randn(kv_heads * d, e) / e**0.5,
        "v_proj.weight": torch.randn(kv_heads * d, e) / e**0.5,
        "o_proj.weight": torch.randn(e, heads * d) / (heads * d) ** 0.5,
    }
    if bias:
        for p in ("q_proj", "k_proj", "v_proj"):
            w[f"{p}.bias"] = torch.rand(w[f"{p}.weight"].shape[0]) - 0.5
    x = torch.rand(b, n, e) * 2 - 1
    dd = {k: v.double() for k, v in w.items()}
    xd = x.double()

    def proj(p, h):
        y = xd @ dd[f"{p}.weight"].T + (dd[f"{p}.bias"] if f"{p}.bias" in dd else 0)
        return y.view(b, n, h, d).transpose(1, 2)

    q, k, v = proj("q_proj", heads), proj("k_proj", kv_heads), proj("v_proj", kv_heads)
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    freqs = torch.outer(torch.arange(start, start + n, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    v = v.repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / d**0.5
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    o = scores.softmax(-1) @ v
    out = o.transpose(1, 2).reshape(b, n, heads * d) @ dd["o_proj.weight"].T
    meta = {"num_heads": str(heads), "num_kv_heads": str(kv_heads), "rope_theta": str(theta), "start": str(start)}
    prefix = "model.layers.0.self_attn."
    tensors = {prefix + k: v for k, v in w.items()}
    tensors.update({"x": x, "out": out.float()})
    save(os.path.join(OUT, f"llama_{name}.safetensors"), tensors, meta)
    print(name, {n: list(t.shape) for n, t in tensors.items()})


def main():
    os.makedirs(OUT, exist_ok=True)
    llama_case("gqa4_1_theta1e4")
    llama_case("gqa8_2_theta5e5_bias", heads=8, kv_heads=2, theta=500000.0, bias=True, b=1, n=11)
    llama_case("gqa4_1_start7", start=7, n=6)
    case("self_bias")
    case("self_no_bias_causal", bias=False, b=1, nq=9, causal=True)
    case("cross_kdim_padding", kdim=24, vdim=40, nq=5, nk=8, self_attn=False, padding=True)
    case("cross_bool_mask", nq=5, nk=8, self_attn=False, mask="bool")
    case("self_float_mask_padding", nq=6, mask="float", padding=True)


if __name__ == "__main__":
    main()
