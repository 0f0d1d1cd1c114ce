"""PyTorch weights into tinyfn: a ``state_dict`` as the params of the matching tinyfn model.

    _, template = model.init(random.key(0), (-1, 64))                 # the tinyfn model, any init
    params = params_from_torch(model, torch_model.state_dict(), template)

The tinyfn model's layers that have params are paired, in order, with the PyTorch modules
that have a ``weight`` in the state dict, in the state dict's order (the order the modules
were registered, which is the order of an ``nn.Sequential``). Each pair must be of matching
kinds, and each array of the shape the template has:

===================  ======================  ==============================================
tinyfn layer         PyTorch module          params
===================  ======================  ==============================================
Dense                nn.Linear               ``w = weight.T`` (in, out); ``b = bias``
Conv2D               nn.Conv2d               ``w = weight`` (OC, C/groups, KH, KW); ``b = bias``
ConvTranspose2D      nn.ConvTranspose2d      ``w = weight`` (C, OC/groups, KH, KW); ``b = bias``
LayerNorm            nn.LayerNorm            ``gamma = weight``; ``beta = bias``
RMSNorm              nn.RMSNorm              ``gamma = weight``
Embedding            nn.Embedding            ``w = weight`` (vocab, dim)
PositionalEmbedding  nn.Embedding            ``w = weight`` (max_len, dim)
===================  ======================  ==============================================

Only the Linear weight is transposed: PyTorch computes ``x @ weight.T``, tinyfn ``x @ w``;
convolution weights, norms and embedding tables have the same layout in both. Parameterless
layers (activations, pooling, Flatten, Dropout) are skipped on both sides, so
``nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 10))`` matches
``serial(Conv2D(8, 3), Relu(), Flatten(), Dense(10))``. Layers with params of other kinds
(BatchNorm, attention, recurrent layers) have no mapping and raise ``ValueError``.
PyTorch is not imported: the values may be tensors (anything with ``.detach()``) or arrays.
"""

from __future__ import annotations

import numpy as np

from .. import tree
from ..layers.base import Layer

__all__ = ["params_from_torch"]


def _as_is(weight):
    """A weight whose layout is the same in PyTorch and tinyfn."""
    return weight


# layer name -> {tinyfn param: (PyTorch field, how its array becomes tinyfn's)}
_MAPPINGS = {
    "dense": {"w": ("weight", np.transpose), "b": ("bias", _as_is)},
    "conv2d": {"w": ("weight", _as_is), "b": ("bias", _as_is)},
    "conv_transpose2d": {"w": ("weight", _as_is), "b": ("bias", _as_is)},
    "layer_norm": {"gamma": ("weight", _as_is), "beta": ("bias", _as_is)},
    "rms_norm": {"gamma": ("weight", _as_is)},
    "embedding": {"w": ("weight", _as_is)},
    "positional_embedding": {"w": ("weight", _as_is)},
}


def params_from_torch(model: Layer, state_dict, params):
    """The params of ``model`` holding the weights of a PyTorch ``state_dict``.

    ``model`` is the tinyfn layer (a ``serial`` of the layers in the table of the module
    docstring, or one of them); ``params`` a params tree of it (from ``model.init``), which
    gives the structure, shapes and dtypes; ``state_dict`` maps PyTorch's names
    (``"0.weight"``, ``"fc1.bias"``) to tensors or arrays. Returns a new params tree of the
    same structure with read-only arrays in the template's dtypes. Raises ``ValueError``
    naming the layer and the PyTorch name when the layers do not pair up (another count, a
    layer with no mapping, a missing or unexpected field) or a shape differs.
    """
    ours = []
    _layers_with_params(model, params, "", ours)
    theirs = _modules_with_weights(state_dict)
    if len(ours) != len(theirs):
        layers_found = ", ".join(path or "<root>" for path, _, _ in ours)
        modules_found = ", ".join(prefix or "<root>" for prefix in theirs)
        raise ValueError(f"params_from_torch: the tinyfn model has {len(ours)} layers with params ({layers_found}), "
                         f"the state_dict {len(theirs)} modules with a weight ({modules_found})")
    arrays = {}
    for (path, layer, layer_params), (prefix, fields) in zip(ours, theirs.items()):
        arrays.update(_converted(path, layer, layer_params, prefix, fields))
    return tree.freeze(tree.map_with_path(lambda path, leaf: arrays[path], params))


def _layers_with_params(layer: Layer, params, path: str, found: list) -> None:
    """Append ``(path, layer, params)`` for each layer with params inside ``layer``, in order."""
    if layer.children:
        for name, child in layer.children:
            if name in params:  # combinators leave out the children without params
                _layers_with_params(child, params[name], f"{path}/{name}" if path else name, found)
    elif params:
        if layer.name not in _MAPPINGS:
            raise ValueError(f"params_from_torch: the layer {path or '<root>'} ({layer.name}) has no PyTorch mapping; "
                             f"mapped: {', '.join(_MAPPINGS)}")
        found.append((path, layer, params))


def _modules_with_weights(state_dict) -> dict:
    """``{module prefix: {field: value}}`` for the modules of ``state_dict`` with a weight, in order."""
    modules: dict = {}
    for key, value in state_dict.items():
        prefix, _, field = key.rpartition(".")
        modules.setdefault(prefix, {})[field] = value
    return {prefix: fields for prefix, fields in modules.items() if "weight" in fields}


def _converted(path: str, layer: Layer, params: dict, prefix: str, fields: dict) -> dict:
    """``{tinyfn path: array}`` for one layer's params from one PyTorch module's fields."""
    mapping = {name: _MAPPINGS[layer.name][name] for name in params}
    where = f"params_from_torch: {path or '<root>'} ({layer.name}) and {prefix or '<root>'}"
    expected = sorted(field for field, _ in mapping.values())
    if sorted(fields) != expected:
        raise ValueError(f"{where}: expected the PyTorch fields {expected}, found {sorted(fields)}")
    out = {}
    for name, (field, convert) in mapping.items():
        value = fields[field]
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        array = np.array(convert(value), dtype=params[name].dtype, order="C")
        if array.shape != params[name].shape:
            how = f"{field}.T" if convert is np.transpose else field
            raise ValueError(f"{where}: expected {name} of shape {params[name].shape} from {prefix}.{field} (as {how}), "
                             f"found {array.shape}")
        out[f"{path}/{name}" if path else name] = array
    return out
