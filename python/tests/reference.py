"""reference: float64 NumPy references written from mha.h's definitions:
the attention core (mha_attention) and a decoder layer (mha_decoder, HF
LlamaAttention with NeoX rotary embedding)."""
import numpy as np


def alibi_slopes(hq):
    """The standard slopes for a power-of-two head count."""
    return 2.0 ** (-8.0 * np.arange(1, hq + 1) / hq)


def reference(q, k, v, scale=None, causal=None, window=0, softcap=0.0,
              slopes=None, sinks=None, bias=None, kv_lens=None):
    """mha.h's mha_attention in float64, q [B,L,Hq,d], k/v [B,S,Hkv,d]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    B, L, Hq, d = q.shape
    S, Hkv = k.shape[1], k.shape[2]
    g = Hq // Hkv
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    s = np.einsum("blhd,bshd->bhls", q, k) * (scale or 1 / np.sqrt(d))
    if softcap:
        s = softcap * np.tanh(s / softcap)
    lens = np.full(B, S) if kv_lens is None else np.asarray(kv_lens)
    i = np.arange(L)[None, :, None]
    j = np.arange(S)[None, None, :]
    p = i + (lens[:, None, None] - L if causal == "bottom_right" else 0)
    if slopes is not None:
        s += np.asarray(slopes, np.float64)[None, :, None, None] * \
            (j - p)[:, None]
    masked = np.zeros((B, 1, L, S), bool)
    if bias is not None and np.asarray(bias).dtype == np.bool_:
        masked = masked | np.broadcast_to(bias, s.shape)
    elif bias is not None:
        s = s + np.asarray(bias, np.float64)
    masked = masked | (j >= lens[:, None, None])[:, None]
    if causal:
        masked = masked | (j > p)[:, None]
    if window:
        masked = masked | (j <= p - window)[:, None]
    s = np.where(masked, -np.inf, s)
    m = np.max(s, axis=-1, keepdims=True)
    if sinks is not None:
        m = np.maximum(m, np.asarray(sinks, np.float64)[None, :, None, None])
    m = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - m)
    den = e.sum(-1, keepdims=True)
    if sinks is not None:
        den = den + np.exp(np.asarray(sinks)[None, :, None, None] - m)
    w = np.where(den > 0, e / np.where(den > 0, den, 1), 0)
    return np.einsum("bhls,bshd->blhd", w, v)


def rope_neox(x, positions, theta=10000.0, rope_dims=0):
    """HF's rotate_half rotary embedding of x [B, T, H, d] at positions
    [B, T], on the first rope_dims features (0: all)."""
    x = np.asarray(x, np.float64)
    r = rope_dims or x.shape[-1]
    half = r // 2
    inv = theta ** (-np.arange(half) * 2.0 / r)
    ang = np.asarray(positions, np.float64)[..., None] * inv
    cos, sin = np.cos(ang)[:, :, None], np.sin(ang)[:, :, None]
    x1, x2 = x[..., :half].copy(), x[..., half:r].copy()
    out = x.copy()
    out[..., :half] = x1 * cos - x2 * sin
    out[..., half:r] = x2 * cos + x1 * sin
    return out


def decoder(x, w, num_heads, num_kv_heads, positions=None, theta=10000.0):
    """One prefill of HF LlamaAttention from an empty cache: x [B, T, E],
    w the weights by HF name (biases optional)."""
    x = np.asarray(x, np.float64)
    B, T, _ = x.shape
    pos = (np.broadcast_to(np.arange(T), (B, T)) if positions is None
           else positions)

    def proj(name, heads):
        y = x @ np.asarray(w[name + ".weight"], np.float64).T
        if name + ".bias" in w:
            y = y + w[name + ".bias"]
        return y.reshape(B, T, heads, -1)

    q = rope_neox(proj("q_proj", num_heads), pos, theta)
    k = rope_neox(proj("k_proj", num_kv_heads), pos, theta)
    v = proj("v_proj", num_kv_heads)
    o = reference(q, k, v, causal="bottom_right").reshape(B, T, -1)
    y = o @ np.asarray(w["o_proj.weight"], np.float64).T
    return y + w["o_proj.bias"] if "o_proj.bias" in w else y
