"""libmha.torch: runs a PyTorch model's attention on a libmha device.

``replace_attention(model, device)`` swaps every torch.nn.MultiheadAttention
of an eval-mode model for an ``Attention`` module holding a
libmha.MultiheadAttention with the same configuration and weights, so the
model's own forward (nn.TransformerEncoder, nn.Transformer, ... with their
masks) runs its attention there. Inference only.
"""
import torch

from .device import resolve
from .errors import UnsupportedError
from .layer import MultiheadAttention


class Attention(torch.nn.Module):
    """A drop-in for an eval-mode torch.nn.MultiheadAttention whose forward
    runs on libmha (``Attention(torch_module, device)``).

    It keeps the attributes PyTorch's containers read (embed_dim,
    num_heads, batch_first, kdim, vdim) and sets ``_qkv_same_embed_dim``
    to False, which makes nn.TransformerEncoderLayer and
    nn.TransformerEncoder take their composite path, the one that calls
    this module, instead of a fused kernel that would read the original
    weights directly. Forwards that need gradients raise UnsupportedError."""

    def __init__(self, module, device=None, dtype="float32"):
        super().__init__()
        self.embed_dim, self.num_heads = module.embed_dim, module.num_heads
        self.kdim, self.vdim = module.kdim, module.vdim
        self.batch_first = module.batch_first
        self._qkv_same_embed_dim = False
        self.layer = MultiheadAttention.from_torch(module, device, dtype)

    def forward(self, query, key, value, key_padding_mask=None,
                need_weights=True, attn_mask=None, average_attn_weights=True,
                is_causal=False):
        """torch.nn.MultiheadAttention.forward's arguments and results."""
        if torch.is_grad_enabled() and any(
                t is not None and t.requires_grad
                for t in (query, key, value)):
            raise UnsupportedError(
                "libmha.torch.Attention: this module has no autograd; the "
                "inputs require gradients (use torch.no_grad() or "
                "torch.inference_mode(), or train with libmha's own "
                "layer.backward)", 7)
        return self.layer(query, key, value,
                          key_padding_mask=key_padding_mask,
                          need_weights=need_weights, attn_mask=attn_mask,
                          average_attn_weights=average_attn_weights,
                          is_causal=is_causal)

    def extra_repr(self):
        return "embed_dim=%d, num_heads=%d, device=%r, dtype=%r" % (
            self.embed_dim, self.num_heads, self.layer.device.spec,
            self.layer.dtype)


def replace_attention(model, device=None, dtype="float32"):
    """Replaces, in place, every torch.nn.MultiheadAttention inside model
    by an Attention running on device (a libmha.Device, a spec such as
    "vulkan:0", or None for the default device); returns model.

    model must be in eval mode (``model.eval()``): libmha does no dropout
    and no backward, so a model in training mode is refused with
    UnsupportedError, as is a later forward whose inputs require grad."""
    if model.training:
        raise UnsupportedError(
            "libmha.torch.replace_attention: the model is in training mode; "
            "the replaced modules have no autograd (call model.eval() "
            "first; libmha's own layers train with layer.backward)", 7)
    dev = resolve(device)
    targets = [(name, mod) for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.MultiheadAttention)]
    if isinstance(model, torch.nn.MultiheadAttention):
        raise UnsupportedError(
            "libmha.torch.replace_attention: model is itself an "
            "nn.MultiheadAttention; use libmha.torch.Attention(model, device)",
            7)
    for name, mod in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Attention(mod, dev, dtype))
    return model
