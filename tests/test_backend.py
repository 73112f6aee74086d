"""The array-module switch, devices and their errors on a machine without a GPU."""
import subprocess
import sys
import types

import numpy as np
import pytest

import tinygnet as tg
from tinygnet import backend


def test_parse_device():
    assert backend.parse_device("cpu") == "cpu"
    assert backend.parse_device(None) == "cpu"
    assert backend.parse_device("cuda") == "cuda:0"
    assert backend.parse_device("CUDA:0") == "cuda:0"
    with pytest.raises(ValueError, match="'tpu'"):
        backend.parse_device("tpu")
    with pytest.raises(TypeError):
        backend.parse_device(0)


def test_a_second_gpu_is_refused_in_one_line_naming_the_way_to_use_it():
    """Nothing selects GPU N around each op (allocations, kernels and the random stream
    would land on GPU 0 and CuPy refuse the mix): cuda:N > 0 is an error, at once."""
    with pytest.raises(ValueError, match=r"^device 'cuda:1': .*one GPU.*CUDA_VISIBLE_DEVICES=1"):
        backend.parse_device("cuda:1")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=2"):
        tg.tensor([1.0], device="cuda:2")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=3"):
        tg.nn.Linear(2, 2).to("cuda:3")


def test_numpy_arrays_use_numpy():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(1.0) is np


def test_cpu_path_never_imports_cupy():
    code = (
        "import sys, numpy as np, tinygnet as tg\n"
        "x = tg.tensor(np.ones((2, 3)), requires_grad=True)\n"
        "(x * x).sum().backward()\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(tg.is_cuda_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_what_is_missing(monkeypatch):
    with pytest.raises(RuntimeError, match="cuda") as info:
        tg.tensor([1.0], device="cuda")
    message = str(info.value)
    assert "CuPy" in message and ("not installed" in message or "no usable NVIDIA GPU" in message)


def test_cuda_error_when_cupy_is_absent(monkeypatch):
    monkeypatch.setattr(backend.devices, "_cupy", False)
    monkeypatch.setattr(backend.devices, "_cupy_error", ImportError("No module named 'cupy'"))
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed.*tinygnet\[gpu13\]"):
        tg.tensor([1.0], device="cuda")
    assert not tg.is_cuda_available()


def test_rng_state_without_a_gpu_stream_has_no_cuda_entries():
    tg.manual_seed(0)
    state = backend.get_rng_state()
    assert state["cuda"] == {}
    expected = backend.default_generator().random(3)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.default_generator().random(3), expected)


@pytest.mark.skipif(tg.is_cuda_available(), reason="this machine has a GPU")
def test_gpu_rng_state_is_dropped_on_a_machine_without_that_gpu():
    tg.manual_seed(0)
    state = backend.get_rng_state()
    expected = backend.default_generator().random(3)
    state["cuda"] = {0: np.zeros(16, dtype=np.int8)}       # as saved on a GPU machine
    with pytest.warns(RuntimeWarning, match="no such GPU"):
        backend.set_rng_state(state)                        # resumes the host stream exactly
    np.testing.assert_array_equal(backend.default_generator().random(3), expected)


# --------------------------------------------------------------------------
# Stand-ins for CuPy: enough of it for the GPU check and the random state
# --------------------------------------------------------------------------
class CompileException(Exception):
    """What CuPy raises when NVRTC cannot compile a kernel."""


class _Device:
    def __init__(self, index=0):
        self.id = index

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def stand_in_cupy(kernels_compile=True, multiprocessors=132):
    """A "CuPy" that sees one GPU, whose compiler works or fails, and whose XORWOW state
    is sized by the GPU's multiprocessor count (48 bytes per cuRAND state, 8 * 256 of
    them per multiprocessor, as CuPy sizes it)."""
    def raw_kernel(source, name):
        def launch(grid, block, args):
            if not kernels_compile:
                raise CompileException("nvrtc: error: invalid value for --gpu-architecture")
            args[0][:block[0]] += 1                     # the probe: x[threadIdx.x] += 1
        return launch

    class XORWOW:
        def __init__(self, seed):
            self._state = np.zeros(48 * 8 * 256 * multiprocessors, dtype=np.int8)

    cupy = types.ModuleType("cupy")
    cupy.__version__ = "stand-in"
    cupy.float32, cupy.zeros, cupy.asarray = np.float32, np.zeros, np.asarray
    cupy.ndarray = type("NotAnArray", (), {})           # no array is a "GPU" array
    cupy.RawKernel = raw_kernel
    cupy.cuda = types.SimpleNamespace(Device=_Device,
                                      runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    cupy.random = types.SimpleNamespace(XORWOW=XORWOW, Generator=lambda bits: ("generator", bits))
    return cupy


@pytest.fixture
def install_cupy(monkeypatch):
    """Install a stand-in CuPy as ``cupy``; tinygnet probes the GPU afresh. The random
    streams are the test's own: no stand-in generator outlives it."""
    monkeypatch.setattr(backend.random, "_gpu_generators", {})
    monkeypatch.setattr(backend.random, "_host_generator", np.random.default_rng())

    def install(cupy):
        monkeypatch.setitem(sys.modules, "cupy", cupy)
        monkeypatch.setattr(backend.devices, "_cupy", None)
        monkeypatch.setattr(backend.devices, "_gpu_problem", None)
        return cupy
    return install


def test_a_gpu_whose_kernels_do_not_compile_is_not_usable(install_cupy):
    """getDeviceCount alone would say yes, and --device auto would fail at the first op."""
    from tinygnet.demo.common import UsageError, resolve_device
    install_cupy(stand_in_cupy(kernels_compile=False))
    assert not tg.is_cuda_available()
    assert "cannot compile and run a kernel (CompileException: nvrtc" in backend.gpu_problem()
    assert resolve_device("auto") == "cpu"
    with pytest.raises(UsageError, match=r"^--device cuda: no usable GPU: CuPy sees 1 GPU"):
        resolve_device("cuda")
    with pytest.raises(RuntimeError, match=r"^device 'cuda:0': .*cannot compile.*gpu13") as info:
        tg.tensor([1.0], device="cuda")
    assert "\n" not in str(info.value)


def test_a_gpu_whose_kernels_run_is_usable(install_cupy):
    install_cupy(stand_in_cupy(kernels_compile=True))
    assert tg.is_cuda_available() and backend.gpu_problem() == ""


def _saved_on_a_gpu(install_cupy, multiprocessors):
    cupy = install_cupy(stand_in_cupy(multiprocessors=multiprocessors))
    tg.manual_seed(0)
    backend.generator_for(cupy)                          # the GPU stream exists
    state = backend.get_rng_state()
    state["cuda"][0][:4] = [1, 2, 3, 4]                  # a state worth restoring
    return state


def test_gpu_rng_state_is_restored_on_the_same_kind_of_gpu(install_cupy, recwarn):
    state = _saved_on_a_gpu(install_cupy, multiprocessors=132)
    cupy = install_cupy(stand_in_cupy(multiprocessors=132))
    backend.set_rng_state(state)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    backend.generator_for(cupy)
    np.testing.assert_array_equal(backend.random._gpu_generators[0][1]._state, state["cuda"][0])


def test_gpu_rng_state_of_another_gpu_restarts_that_stream_with_a_warning(install_cupy):
    """CuPy sizes the cuRAND state by the multiprocessor count: a run saved on an H200
    (132) resumes on an A100 (108), its GPU stream derived afresh from the host's."""
    state = _saved_on_a_gpu(install_cupy, multiprocessors=132)
    cupy = install_cupy(stand_in_cupy(multiprocessors=108))
    with pytest.warns(RuntimeWarning, match=r"random stream of cuda:0 cannot be restored "
                                            r"\(its saved state has .* bytes"):
        backend.set_rng_state(state)                     # not an error: --resume goes on
    assert backend.default_generator().bit_generator.state == state["host"]
    assert backend.random._gpu_generators == {}
    backend.generator_for(cupy)                          # derived from the host stream
    assert backend.random._gpu_generators[0][1]._state.size == 48 * 8 * 256 * 108
