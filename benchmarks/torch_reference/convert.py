"""Copies Flax parameters of ssgan_jax.networks.models into the PyTorch modules of this package."""
import numpy as np
import torch

from benchmarks.torch_reference import models


def _dense_kernel(kernel):
  """Flax (in, out) -> torch (out, in)."""
  return kernel.T


def _conv_kernel(kernel):
  """Flax (kh, kw, in, out) -> torch conv2d (out, in, kh, kw)."""
  return kernel.transpose(3, 2, 0, 1)


def _conv_transpose_kernel(kernel):
  """Flax ConvTranspose (kh, kw, in, out), not flipped -> torch conv_transpose2d (in, out, kh, kw).

  XLA's transposed convolution correlates the dilated input with the kernel as stored;
  PyTorch's uses the kernel flipped in space.
  """
  return kernel[::-1, ::-1].transpose(2, 3, 0, 1)


def _copy(target: torch.Tensor, value) -> None:
  value = torch.as_tensor(np.array(value, order='C'), dtype=target.dtype)  # a writable copy
  if value.shape != target.shape:
    raise ValueError(f'shape {tuple(value.shape)} does not fit {tuple(target.shape)}')
  with torch.no_grad():
    target.copy_(value)


def _flax_layers(module: torch.nn.Module) -> dict:
  """The torch layers of a model by the name of the Flax submodule they stand for."""
  if isinstance(module, models.MlpDiscriminator):
    return {f'WNDense_{i}': layer for i, layer in enumerate([*module.hidden, module.output])}
  if isinstance(module, models.ConvDiscriminator):
    convs = [conv for block in module.blocks for conv in block] + list(module.head)
    return {**{f'WNConv_{i}': conv for i, conv in enumerate(convs)},
            'WNDense_0': module.output}
  if isinstance(module, models.MlpGenerator):
    return {**{f'Dense_{i}': linear for i, linear in enumerate(module.linears)},
            **{f'BatchNorm_{i}': norm for i, norm in enumerate(module.norms)},
            'WNDense_0': module.output}
  if isinstance(module, models.BasicBlock):
    layers = {'Conv_0': module.conv1, 'GroupBatchNorm_0': module.norm1,
              'Conv_1': module.conv2, 'GroupBatchNorm_1': module.norm2}
    if module.shortcut is not None:
      layers.update(Conv_2=module.shortcut, GroupBatchNorm_2=module.shortcut_norm)
    return layers
  if isinstance(module, models.ResNet18Discriminator):
    return {'Conv_0': module.stem, 'GroupBatchNorm_0': module.stem_norm,
            **{f'BasicBlock_{i}': block for i, block in enumerate(module.blocks)},
            'Dense_0': module.output}
  if isinstance(module, models.DcganGenerator):
    return {'Dense_0': module.project, 'BatchNorm_0': module.project_norm,
            **{f'ConvTranspose_{i}': w for i, w in enumerate(module.upsample)},
            **{f'BatchNorm_{i + 1}': norm for i, norm in enumerate(module.upsample_norms)}}
  if isinstance(module, models.ConvGenerator):
    return {'Dense_0': module.project, 'BatchNorm_0': module.project_norm,
            **{f'ConvTranspose_{i}': w for i, w in enumerate(module.upsample)},
            **{f'BatchNorm_{i + 1}': norm for i, norm in enumerate(module.upsample_norms)},
            'WNConv_0': module.output}
  raise TypeError(f'no Flax counterpart for {type(module).__name__}')


def _load_layer(layer, params: dict, constants: dict, batch_stats: dict) -> None:
  if isinstance(layer, models.BasicBlock):
    _load_layers(layer, params, constants, batch_stats)
  elif isinstance(layer, models.GroupBatchNorm2d):
    _copy(layer.weight, params['scale'])
    _copy(layer.bias, params['bias'])
    _copy(layer.running_mean, batch_stats['mean'])
    _copy(layer.running_var, batch_stats['var'])
  elif isinstance(layer, torch.nn.Conv2d):
    _copy(layer.weight, _conv_kernel(params['kernel']))
  elif isinstance(layer, (models.WNLinear, models.WNConv2d)):
    (kernel_name, kernel), = ((k, v['kernel']) for k, v in params.items() if k != 'ScaleBias_0')
    if isinstance(layer, models.WNLinear):
      _copy(layer.v, _dense_kernel(kernel))
    else:
      _copy(layer.v, _conv_transpose_kernel(kernel) if layer.transpose else _conv_kernel(kernel))
    scale_bias = {**constants.get('ScaleBias_0', {}), **params['ScaleBias_0']}
    if layer.normalised:
      _copy(layer.scale_bias.scale, scale_bias['scale'])
    _copy(layer.scale_bias.bias, scale_bias['bias'])
    layer.scale_bias.pending_init = False
  elif isinstance(layer, torch.nn.Linear):
    _copy(layer.weight, _dense_kernel(params['kernel']))
    if layer.bias is not None:
      _copy(layer.bias, params['bias'])
  elif isinstance(layer, models.BatchNormBias):
    _copy(layer.bias, params['bias'])
    if layer.weight is not None:
      _copy(layer.weight, params['scale'])
  elif isinstance(layer, torch.nn.Parameter):  # a plain transposed convolution kernel
    _copy(layer, _conv_transpose_kernel(params['kernel']))
  else:
    raise TypeError(f'cannot load {type(layer).__name__}')


def load_flax_variables(module: torch.nn.Module, variables: dict) -> None:
  """Sets `module`'s parameters and fixed scales from Flax variables of the same model.

  `variables` holds 'params' and, for a discriminator, 'constants' or (ResNet-18) its
  'batch_stats'; a generator's 'batch_stats' are not needed (it always normalises with batch
  statistics).
  """
  _load_layers(module, variables['params'], variables.get('constants', {}),
               variables.get('batch_stats', {}) if isinstance(
                   module, models.ResNet18Discriminator) else {})


def _load_layers(module: torch.nn.Module, params: dict, constants: dict,
                 batch_stats: dict) -> None:
  layers = _flax_layers(module)
  if set(layers) != set(params):
    raise ValueError(f'Flax modules {sorted(params)} do not match {sorted(layers)}')
  for name, layer in layers.items():
    _load_layer(layer, params[name], constants.get(name, {}), batch_stats.get(name, {}))
