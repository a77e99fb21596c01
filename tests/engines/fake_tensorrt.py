"""A FAKE `tensorrt` module: it stands in for TensorRT, which cannot be installed here, so that
OUR logic around it (version dispatch, flags chosen, profiles, caches, manifest checks) can be
tested. It builds nothing and proves nothing about TensorRT itself; the real API is checked only
statically (tests/test_typecheck.py against tensorrt-stubs 10.13)."""

from __future__ import annotations

import enum
import types


class _Flag(enum.IntEnum):
    pass


def make_fake_tensorrt(version: str, layers: tuple[str, ...] = ("CONVOLUTION", "MATRIX_MULTIPLY")):
    """A module object with the subset of the TensorRT API that odelt.engines.tensorrt uses,
    shaped like `version` (8.x has EXPLICIT_BATCH and precision flags, 11.x has no FP16/INT8)."""
    major = int(version.split(".")[0])
    log: dict = {"networks": [], "configs": [], "builds": 0, "deserialized": []}
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    m.fake_log = log

    class Logger:
        WARNING = 2

        def __init__(self, severity=None):
            self.severity = severity

    m.Logger = m.ILogger = Logger
    m.NetworkDefinitionCreationFlag = _Flag("NetworkDefinitionCreationFlag",
                                            {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    flags = {"GPU_FALLBACK": 3} if major >= 11 else {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 3}
    m.BuilderFlag = _Flag("BuilderFlag", flags)
    m.MemoryPoolType = _Flag("MemoryPoolType", {"WORKSPACE": 0})
    m.DeviceType = _Flag("DeviceType", {"GPU": 0, "DLA": 1})
    m.LayerType = _Flag("LayerType", {"CONVOLUTION": 0, "MATRIX_MULTIPLY": 17, "SOFTMAX": 6})

    class Dims(tuple):
        pass

    m.Dims = Dims

    class Layer:
        def __init__(self, kind):
            self.type = m.LayerType[kind]

    class Network:
        def __init__(self, flags):
            self.flags, self.layers = flags, [Layer(k) for k in layers]
            log["networks"].append(self)

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.source = path
            return True

    m.OnnxParser = Parser

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+timed"

    class Config:
        def __init__(self):
            self.flags, self.pools, self.shape_ranges, self.devices = [], {}, [], {}
            self.builder_optimization_level = None
            self.timing_cache = None
            self.default_device_type, self.DLA_core = m.DeviceType.GPU, None
            log["configs"].append(self)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.append(flag.name)

        def add_optimization_profile(self, p):
            self.shape_ranges.append(p)
            return len(self.shape_ranges) - 1

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

        def can_run_on_DLA(self, layer):
            return layer.type == m.LayerType.CONVOLUTION

        def set_device_type(self, layer, device):
            self.devices[layer.type.name] = device.name

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log["builds"] += 1
            return f"PLAN:{network.source}:{sorted(config.flags)}".encode()

    m.Builder = Builder

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            log["deserialized"].append(bytes(data))
            return ("fake engine", bytes(data))

    m.Runtime = Runtime
    return m
