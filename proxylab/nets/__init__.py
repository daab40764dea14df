"""Networks: a registry of small-image networks, reproducible training, checkpoints, user-supplied networks."""
from proxylab.nets.zoo import NETS, DEFAULT_INPUT, count_params, create_net, list_nets, net_options
from proxylab.nets import resnet_cifar, timm_nets, vgg  # noqa: F401  (registers the networks)
from proxylab.nets.train import evaluate, train_net
from proxylab.nets.checkpoint import build_net_from_config, load_checkpoint, save_checkpoint
from proxylab.nets.user import load_user_network

__all__ = [
    "NETS", "DEFAULT_INPUT", "count_params", "create_net", "list_nets", "net_options",
    "train_net", "evaluate", "save_checkpoint", "load_checkpoint", "build_net_from_config", "load_user_network",
]
